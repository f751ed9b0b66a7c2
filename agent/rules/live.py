"""Read the declared model from the node itself (inside a namespace when asked)."""

from __future__ import annotations

import subprocess
import time

from natlens import netns
from natlens.agent.rules.iptables import parse_iptables_save
from natlens.agent.rules.ipvs import parse_ipvs
from natlens.agent.rules.model import DeclaredModel
from natlens.agent.rules.nftables import parse_nft
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb


class RulesUnavailable(NatlensError, RuntimeError):
    """The node's rules could not be read (tool missing, permission, bad dump)."""


def _nft(ns: str | None, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(netns.command(ns, ["nft", *args]), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RulesUnavailable(f"nft {' '.join(args)} took longer than {timeout:.0f}s") from None


def read_nftables(ns: str | None = None, timeout: float = 60.0) -> DeclaredModel | None:
    """kube-proxy's ``ip``/``ip6 kube-proxy`` tables, or None when neither exists.

    One ``nft list tables`` decides (this runs every rules interval, and on iptables
    nodes there is nothing more to read); only the tables present are listed."""
    try:
        tables = _nft(ns, ["list", "tables"], timeout)
    except FileNotFoundError:
        return None  # no nft binary: not an nftables-mode node as far as we can tell
    present = [f for f in ("ip", "ip6") if f"table {f} kube-proxy" in tables.stdout.splitlines()]
    texts = []
    for family in present:
        r = _nft(ns, ["list", "table", family, "kube-proxy"], timeout)
        if r.returncode != 0:
            msg = r.stderr.strip().splitlines()
            raise RulesUnavailable(f"nft list table {family} kube-proxy failed: "
                                   f"{msg[-1] if msg else r.returncode}")
        texts.append(r.stdout)
    if not texts:
        return None
    try:
        return parse_nft("".join(texts))
    except ValueError as e:
        raise RulesUnavailable(f"nft output not understood: {e}") from None


def read_rules(ns: str | None = None) -> DeclaredModel:
    """The node's declared model; the proxy mode is detected: kube-proxy's nftables
    table when it exists, else its iptables chains, else (when the iptables dump is
    IPVS mode's, matching the KUBE-CLUSTER-IP ipset) the IPVS table."""
    nft = read_nftables(ns)
    if nft is not None:
        return nft
    text = _save(ns, "iptables-save")
    model = _both_families(text, ns)
    if not model.services and IPVS_MARKER in text:
        return read_ipvs(ns)
    return model


IPVS_MARKER = "KUBE-CLUSTER-IP"  # the ipset kube-proxy's IPVS proxier matches ClusterIPs with


def _save(ns: str | None, tool: str, timeout: float = 60.0) -> str:
    argv = netns.command(ns, [tool] if tool != "ipvsadm-save" else [tool, "-n"])
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        pkg = "ipvsadm" if tool == "ipvsadm-save" else "iptables"
        raise RulesUnavailable(f"{tool} not found: install {pkg}") from None
    except subprocess.TimeoutExpired:
        raise RulesUnavailable(f"{tool} took longer than {timeout:.0f}s") from None
    if r.returncode != 0:
        msg = r.stderr.strip().splitlines()
        raise RulesUnavailable(f"{tool} failed: {msg[-1] if msg else r.returncode}")
    return r.stdout


def _parse_iptables(text: str) -> DeclaredModel:
    try:
        return parse_iptables_save(text)
    except ValueError as e:
        raise RulesUnavailable(f"iptables-save output not understood: {e}") from None


def read_iptables(ns: str | None = None) -> DeclaredModel:
    return _both_families(_save(ns, "iptables-save"), ns)


def _both_families(v4_text: str, ns: str | None) -> DeclaredModel:
    """kube-proxy runs an ip6tables proxier beside the iptables one on dual-stack nodes,
    and an IPv6-only node has only the second; a family without tables is skipped."""
    v6_text = _ip6tables_save(ns)
    texts = [t for t in (v4_text, v6_text) if t and "\n*" in "\n" + t]
    models = [_parse_iptables(t) for t in texts] or [_parse_iptables(v4_text)]
    services = sorted((s for m in models for s in m.services),
                      key=lambda s: (s.service, s.kind, s.vip, s.port, s.protocol))
    return DeclaredModel(models[0].mode, tuple(services))


def _ip6tables_save(ns: str | None) -> str | None:
    try:
        return _save(ns, "ip6tables-save")
    except RulesUnavailable as e:
        if "not found" in str(e):
            return None  # no ip6tables binary: an IPv4-only node
        raise


def read_ipvs(ns: str | None = None) -> DeclaredModel:
    try:
        return parse_ipvs(_save(ns, "ipvsadm-save"))
    except ValueError as e:
        raise RulesUnavailable(f"ipvsadm-save output not understood: {e}") from None


def to_snapshot(model: DeclaredModel, time_ns: int | None = None) -> pb.RuleSnapshot:
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
