"""Where decisions come from: ctnetlink (netlink.py), later eBPF and packets."""
