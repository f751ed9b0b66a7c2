"""The lab: a small cluster of network namespaces with kube-proxy-faithful rules."""
