"""What an agent is told to do: built by keyword from the command line (or a test)."""

from __future__ import annotations

from dataclasses import dataclass

from natlens.security import TlsFiles

DEFAULT_PIN_ROOT = "/sys/fs/bpf/natlens"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    collector: str
    node: str
    netns: str | None = None
    agent_id: str = ""
    source: str = "netlink"          # netlink, ebpf, hook, pcap, or auto (hook, ebpf, netlink)
    aggregate_only: bool = False     # hook, ebpf: counts only, no per-connection records
    sample: int = 1                  # ebpf decisions, hook records: 1 in N, in the kernel
    ring_bytes: int | None = None    # hook: the record ring's size (None: the program's)
    closes: bool = False             # hook: read DESTROY events for bytes and ends
    pin_root: str = DEFAULT_PIN_ROOT
    counters_interval: float = 5.0
    rules_interval: float = 2.0
    batch_size: int = 2000
    batch_age: float = 1.0
    drain_timeout: float = 30.0
    accounting: bool = True
    rcvbuf: int = 64 << 20
    health_listen: str | None = None  # HOST:PORT for /healthz, /readyz and /metrics
    tls: TlsFiles | None = None       # None: plaintext, only with --insecure
    token: str | None = None          # bearer token sent with the stream
    tls_server_name: str | None = None
    keep_privileges: bool = False     # True: do not drop capabilities after set-up
    spool: str | None = None          # directory of the on-disk spool (None: memory only)
    spool_max_bytes: int = 256 << 20

    @property
    def records(self) -> bool:
        """Whether a kernel-counting source also ships a record per connection."""
        return not self.aggregate_only

    @property
    def id(self) -> str:
        return self.agent_id or self.node

    @property
    def where(self) -> str:
        """The namespace watched, for log lines."""
        return self.netns or "this namespace"
