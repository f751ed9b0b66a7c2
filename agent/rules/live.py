"""Read the declared model from the node itself (inside a namespace when asked).

The proxy mode is detected as kube-proxy's own tables say: its nftables tables when they
exist, else its iptables chains (``iptables-save`` and ``ip6tables-save``), else, when
the iptables dump is IPVS mode's (the ``KUBE-CLUSTER-IP`` ipset rule), the IPVS table.
``RulesReader`` remembers the last dump it parsed: a re-read that finds the same rules
(counters and timestamps aside) costs the dump, never the parse, in every mode.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from natlens import netns
from natlens.agent.rules.iptables import parse_iptables_save
from natlens.agent.rules.ipvs import parse_ipvs
from natlens.agent.rules.model import DeclaredModel
from natlens.agent.rules.nftables import parse_nft
from natlens.errors import NatlensError

if TYPE_CHECKING:
    from natlens.proto import natlens_pb2 as pb

IPVS_MARKER = "KUBE-CLUSTER-IP"  # the ipset kube-proxy's IPVS proxier matches ClusterIPs with
# What changes in a dump when the rules do not: iptables-save's date line and the
# packet counters of built-in chains, nft's counter statements.
_VOLATILE = re.compile(r"^#.*$|\[\d+:\d+\]|counter packets \d+ bytes \d+", re.M)


class RulesUnavailable(NatlensError, RuntimeError):
    """The node's rules could not be read (tool missing, permission, bad dump)."""


def _run(ns: str | None, argv: list[str], timeout: float = 60.0,
         package: str = "") -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(netns.command(ns, argv), capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise RulesUnavailable(f"{argv[0]} not found: install {package or argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise RulesUnavailable(f"{' '.join(argv)} took longer than {timeout:.0f}s") from None


def _checked(r: subprocess.CompletedProcess[str], what: str) -> str:
    if r.returncode != 0:
        msg = r.stderr.strip().splitlines()
        raise RulesUnavailable(f"{what} failed: {msg[-1] if msg else r.returncode}")
    return r.stdout


def nft_texts(ns: str | None) -> list[str] | None:
    """kube-proxy's ``ip``/``ip6 kube-proxy`` tables, None when neither exists (or
    there is no ``nft``). One ``nft list tables`` decides; only tables present are
    listed."""
    try:
        tables = _run(ns, ["nft", "list", "tables"])
    except RulesUnavailable as e:
        if "not found" in str(e):
            return None  # no nft binary: not an nftables-mode node as far as we can tell
        raise
    present = [f for f in ("ip", "ip6") if f"table {f} kube-proxy" in tables.stdout.splitlines()]
    texts = [_checked(_run(ns, ["nft", "list", "table", f, "kube-proxy"]),
                      f"nft list table {f} kube-proxy") for f in present]
    return texts or None


def _save(ns: str | None, tool: str) -> str:
    argv = [tool] if tool != "ipvsadm-save" else [tool, "-n"]
    package = "ipvsadm" if tool == "ipvsadm-save" else "iptables"
    return _checked(_run(ns, argv, package=package), tool)


def iptables_texts(ns: str | None) -> list[str]:
    """``iptables-save`` and ``ip6tables-save``: kube-proxy runs a proxier per family on
    a dual-stack node, an IPv6-only node has only the second; a family without tables is
    left out (no ``ip6tables`` binary: an IPv4-only node)."""
    texts = [_save(ns, "iptables-save")]
    try:
        texts.append(_save(ns, "ip6tables-save"))
    except RulesUnavailable as e:
        if "not found" not in str(e):
            raise
    return texts


def parse_iptables(texts: list[str]) -> DeclaredModel:
    present = [t for t in texts if t and "\n*" in "\n" + t] or texts[:1]
    try:
        models = [parse_iptables_save(t) for t in present]
    except ValueError as e:
        raise RulesUnavailable(f"iptables-save output not understood: {e}") from None
    services = sorted((s for m in models for s in m.services),
                      key=lambda s: (s.service, s.kind, s.vip, s.port, s.protocol))
    return DeclaredModel(models[0].mode, tuple(services),
                         tuple(i for m in models for i in m.ignored),
                         sum(m.modeled for m in models))


def parse_nftables(texts: list[str]) -> DeclaredModel:
    try:
        return parse_nft("".join(texts))
    except ValueError as e:
        raise RulesUnavailable(f"nft output not understood: {e}") from None


def parse_ipvs_text(text: str) -> DeclaredModel:
    try:
        return parse_ipvs(text)
    except ValueError as e:
        raise RulesUnavailable(f"ipvsadm-save output not understood: {e}") from None


def dump(ns: str | None, mode: str = "auto") -> tuple[str, list[str]]:
    """The node's rules as text: (mode, texts), ``mode`` detected when ``auto``."""
    if mode in ("auto", "nftables"):
        nft = nft_texts(ns)
        if nft is not None:
            return "nftables", nft
        if mode == "nftables":
            raise RulesUnavailable("no kube-proxy nftables table (nft list table ip "
                                   "kube-proxy)")
    if mode == "ipvs":
        return "ipvs", [_save(ns, "ipvsadm-save")]
    texts = iptables_texts(ns)
    if mode == "auto" and IPVS_MARKER in texts[0] and not any(
            c in t for t in texts for c in ("KUBE-SVC-", "KUBE-SVL-")):
        return "ipvs", [_save(ns, "ipvsadm-save")]  # IPVS mode keeps no service chains
    return "iptables", texts


def parse(mode: str, texts: list[str]) -> DeclaredModel:
    if mode == "nftables":
        return parse_nftables(texts)
    if mode == "ipvs":
        return parse_ipvs_text(texts[0])
    return parse_iptables(texts)


def digest(mode: str, texts: list[str]) -> str:
    """What identifies a dump's rules: the text less dates and counters."""
    h = hashlib.sha256(mode.encode())
    for t in texts:
        h.update(b"\0" + _VOLATILE.sub("", t).encode())
    return h.hexdigest()


class RulesReader:
    """The node's declared model, parsed again only when the dump's rules changed."""

    def __init__(self, mode: str = "auto",
                 fetch: Callable[[str | None, str], tuple[str, list[str]]] = dump) -> None:
        self.mode, self.fetch = mode, fetch
        self.parses = 0
        self._last: tuple[str, DeclaredModel] | None = None

    def __call__(self, ns: str | None = None) -> DeclaredModel:
        mode, texts = self.fetch(ns, self.mode)
        d = digest(mode, texts)
        if self._last is not None and self._last[0] == d:
            return self._last[1]
        model = parse(mode, texts)
        self.parses += 1
        self._last = (d, model)
        return model


def read_rules(ns: str | None = None, mode: str = "auto") -> DeclaredModel:
    """The node's declared model, read once."""
    return RulesReader(mode)(ns)


def to_snapshot(model: DeclaredModel, time_ns: int | None = None) -> pb.RuleSnapshot:
    from natlens.proto import natlens_pb2 as pb

    return pb.RuleSnapshot(
        time_ns=time.time_ns() if time_ns is None else time_ns, mode=model.mode,
        hash=model.hash,
        services=[pb.ServicePort(
            service=s.service, kind=s.kind, vip=s.vip, port=s.port, protocol=s.protocol,
            affinity=s.affinity, policy=s.policy, chain=s.chain,
            scheduler=s.scheduler,
            endpoints=[pb.DeclaredEndpoint(endpoint=e.endpoint, probability=e.probability,
                                           chain=e.chain) for e in s.endpoints])
            for s in model.services])
