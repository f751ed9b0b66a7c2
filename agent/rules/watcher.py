"""The rules watcher: read the node's rules at start, then again whenever they may have
changed, and hand a snapshot on each time the declared model's hash changes.

"May have changed" is nf_tables' generation (``generation.py``): where it tracks the
proxy's rules (nftables mode, iptables on the nf_tables backend) an unchanged
generation means nothing to read. Elsewhere (legacy iptables, IPVS, or a generation
that cannot be read) the rules are read every interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from natlens.agent.rules.generation import Generation, iptables_version, tracks
from natlens.agent.rules.live import RulesReader, RulesUnavailable, to_snapshot
from natlens.agent.rules.model import DeclaredModel
from natlens.proto import natlens_pb2 as pb

log = logging.getLogger("natlens.agent")

Vips = set[tuple[str, int, str]]


class RulesWatcher:
    def __init__(self, netns: str | None, interval: float,
                 emit: Callable[[pb.RuleSnapshot], None],
                 read: Callable[[str | None], DeclaredModel] | None = None,
                 on_read: Callable[[], None] = lambda: None) -> None:
        """``emit`` gets each new snapshot; ``on_read`` is called after every read that
        worked (the agent is ready from the first); ``read``: the node's reader by
        default, which parses only rules that changed."""
        self.netns, self.interval, self._emit = netns, interval, emit
        self._read = read or RulesReader()
        self._on_read = on_read
        self.reads = 0              # for the stop line and /metrics
        self.hash = ""
        self.mode = ""
        self.ready = False          # read at least once
        self._vips: Vips = set()
        self._gen: Generation | None = None   # None: read every interval
        self._gen_at_read: int | None = None  # the generation the last read saw
        self._iptables_v = ""

    @property
    def parses(self) -> int | None:
        """How many reads parsed the rules (None with a reader that does not say)."""
        return getattr(self._read, "parses", None)

    def open(self) -> None:
        """While the agent can still enter the namespace: the socket that says whether
        anything changed."""
        self._iptables_v = iptables_version()
        try:
            self._gen = Generation(self.netns)
        except OSError as e:
            self._unreadable(e)

    def vips(self) -> Vips | None:
        """The declared (VIP, port, protocol)s, None before any rules were read."""
        return self._vips or None

    def read_now(self) -> bool:
        """Read the rules once; False (and a log line) when they cannot be read."""
        return self._read_rules(self._generation())

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self._watch, args=(stop,), name="rules", daemon=True)
        t.start()
        return t

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            gen = self._generation()
            if (gen is not None and gen == self._gen_at_read
                    and tracks(self.mode, self._iptables_v)):
                continue  # no nf_tables commit since the last read: nothing to read
            self._read_rules(gen)

    def _read_rules(self, gen: int | None) -> bool:
        """``gen``: the generation read before (a commit during the read makes the next
        check read again)."""
        t0 = time.time_ns()
        self.reads += 1
        try:
            model = self._read(self.netns)
        except RulesUnavailable as e:
            log.error("rules: %s", e)
            return False
        self._gen_at_read, self.mode, self.ready = gen, model.mode, True
        self._on_read()
        if model.hash != self.hash:
            log.info("rules: %s mode, %d service ports, %s", model.mode, len(model.services),
                     model.hash[:19])
            self.hash = model.hash
            self._vips = {(sp.vip, sp.port, sp.protocol) for sp in model.services}
            self._emit(to_snapshot(model, t0))
        return True

    def _generation(self) -> int | None:
        """The namespace's nf_tables generation; None when it cannot be read."""
        if self._gen is None:
            return None
        try:
            return self._gen.read()
        except (OSError, ValueError) as e:
            self._unreadable(e)
            return None

    def _unreadable(self, e: Exception) -> None:
        log.warning("rules: nf_tables generation unreadable (%s); the rules are read "
                    "every %.1f s", e, self.interval)
        if self._gen is not None:
            self._gen.close()
        self._gen = None
