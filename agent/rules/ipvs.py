"""kube-proxy's IPVS mode (``ipvsadm -Ln`` or ``ipvsadm-save -n``) → the declared model.

IPVS keeps no service names, so a virtual service is named by what it is,
``VIP:PORT/proto`` (``[IPv6]:PORT/proto``); ports in Kubernetes' default NodePort range
(30000–32767) are reported as ``nodePort``, everything else as ``clusterIP``, because the
listing does not say which. ``persistent`` (``-p``) is ClientIP affinity.

Shares come from the scheduler: ``rr`` rotates over the real servers with a weight above
0 (equal shares, weight 0 is kube-proxy's "terminating"), every other scheduler's share
is its weight over the sum. Only ``rr`` and ``wrr`` fix the sequence of choices; the
report tests those as a rotation (``collector/analyze/rotation.py``), and says that
load- or hash-based schedulers (``lc``, ``sh``, …) are not tested.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from fractions import Fraction

from natlens.agent.rules.model import DeclaredEndpoint, DeclaredModel, ServicePort
from natlens.errors import NatlensError
from natlens.proto.names import endpoint_key

ROTATION_SCHEDULERS = ("rr", "wrr")
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf",
              "mh", "twos")
NODE_PORT_RANGE = range(30000, 32768)


class IpvsParseError(NatlensError, ValueError):
    """Text natlens cannot read as an IPVS table; the message names the line."""


@dataclass
class _Virtual:
    line: int
    protocol: str
    vip: str
    port: int
    scheduler: str
    persistent: bool
    reals: list[tuple[str, int, int]] = field(default_factory=list)  # ip, port, weight


_PROTO = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_SAVE_PROTO = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
               "--sctp-service": "sctp"}


def _addr(text: str, lineno: int) -> tuple[str, int]:
    """``10.0.0.1:80`` or ``[fd00::1]:80`` → (ip, port); names are refused."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep:
        raise IpvsParseError(f"line {lineno}: {text!r} is not ADDRESS:PORT")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise IpvsParseError(f"line {lineno}: {host!r} is a name, not an address: list "
                             f"with -n (ipvsadm -Ln, ipvsadm-save -n)") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise IpvsParseError(f"line {lineno}: {text!r} is not ADDRESS:PORT")
    return str(ip), int(port)


def _scheduler(name: str, lineno: int) -> str:
    if name not in SCHEDULERS:
        raise IpvsParseError(f"line {lineno}: unknown scheduler {name!r}")
    return name


def _weight(text: str, lineno: int) -> int:
    if not text.isdigit():
        raise IpvsParseError(f"line {lineno}: weight {text!r} is not a number")
    return int(text)


def _read_list(lines: list[tuple[int, str]]) -> list[_Virtual]:
    """``ipvsadm -Ln``: a virtual service line, then its ``->`` real servers."""
    out: list[_Virtual] = []
    for n, line in lines:
        parts = line.split()
        if line.startswith(("IP Virtual Server", "Prot LocalAddress")) or \
                parts[:2] == ["->", "RemoteAddress:Port"]:
            continue
        if parts[0] == "->":
            if not out:
                raise IpvsParseError(f"line {n}: real server before any virtual service")
            if len(parts) < 4:
                raise IpvsParseError(f"line {n}: expected '-> ADDRESS:PORT FORWARD WEIGHT …'")
            ip, port = _addr(parts[1], n)
            out[-1].reals.append((ip, port, _weight(parts[3], n)))
        elif parts[0] == "FWM":
            out.append(_Virtual(n, "fwmark", "", 0, "", False))  # no VIP to match: skipped
        elif parts[0] in _PROTO:
            if len(parts) < 3:
                raise IpvsParseError(f"line {n}: expected 'PROT ADDRESS:PORT SCHEDULER'")
            ip, port = _addr(parts[1], n)
            out.append(_Virtual(n, _PROTO[parts[0]], ip, port, _scheduler(parts[2], n),
                                "persistent" in parts[3:]))
        else:
            raise IpvsParseError(f"line {n}: not ipvsadm -Ln output: {line[:60]!r}")
    return out


def _option(parts: list[str], names: tuple[str, ...], n: int) -> str | None:
    for i, p in enumerate(parts):
        if p in names:
            if i + 1 >= len(parts):
                raise IpvsParseError(f"line {n}: option {p} has no value")
            return parts[i + 1]
    return None


def _read_save(lines: list[tuple[int, str]]) -> list[_Virtual]:
    """``ipvsadm-save -n``: ``-A`` adds a virtual service, ``-a`` a real server to one."""
    by_key: dict[tuple[str, str], _Virtual] = {}
    out: list[_Virtual] = []
    for n, line in lines:
        parts = line.split()
        if parts[0] not in ("-A", "-a"):
            raise IpvsParseError(f"line {n}: not ipvsadm-save output: {line[:60]!r}")
        if _option(parts, ("-f", "--fwmark-service"), n) is not None:
            if parts[0] == "-A":
                out.append(_Virtual(n, "fwmark", "", 0, "", False))
            continue
        proto_flag = next((p for p in parts if p in _SAVE_PROTO), None)
        if proto_flag is None:
            raise IpvsParseError(f"line {n}: no -t/-u/--sctp-service virtual service")
        proto = _SAVE_PROTO[proto_flag]
        vaddr = _option(parts, (proto_flag,), n)
        assert vaddr is not None
        vip, vport = _addr(vaddr, n)
        key = (proto, endpoint_key(vip, vport))
        if parts[0] == "-A":
            sched = _option(parts, ("-s", "--scheduler"), n) or "wlc"
            persistent = any(p in ("-p", "--persistent") for p in parts)
            v = _Virtual(n, proto, vip, vport, _scheduler(sched, n), persistent)
            by_key[key] = v
            out.append(v)
        else:
            if key not in by_key:
                raise IpvsParseError(f"line {n}: real server for {key[1]}/{proto}, which "
                                     f"no -A line added")
            raddr = _option(parts, ("-r", "--real-server"), n)
            if raddr is None:
                raise IpvsParseError(f"line {n}: -a without -r")
            ip, port = _addr(raddr, n)
            w = _option(parts, ("-w", "--weight"), n)
            by_key[key].reals.append((ip, port, 1 if w is None else _weight(w, n)))
    return out


def shares(scheduler: str, weights: list[int]) -> list[Fraction]:
    """Each real server's share of new connections under the scheduler."""
    live = [w for w in weights if w > 0]
    if not live:
        return [Fraction(0)] * len(weights)
    if scheduler == "rr":
        return [Fraction(1, len(live)) if w > 0 else Fraction(0) for w in weights]
    return [Fraction(w, sum(live)) for w in weights]


def parse_ipvs(text: str) -> DeclaredModel:
    """The model of ``ipvsadm -Ln`` or ``ipvsadm-save -n`` output (detected)."""
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise IpvsParseError("empty input: expected ipvsadm -Ln or ipvsadm-save -n output")
    save = lines[0][1].startswith(("-A ", "-a "))
    virtuals = _read_save(lines) if save else _read_list(lines)
    services: list[ServicePort] = []
    for v in virtuals:
        if v.protocol == "fwmark":
            continue
        vip_key = endpoint_key(v.vip, v.port)
        weights = [w for _, _, w in v.reals]
        eps = tuple(DeclaredEndpoint(endpoint_key(ip, port), float(s), "")
                    for (ip, port, _), s in zip(v.reals, shares(v.scheduler, weights),
                                                strict=True))
        kind = "nodePort" if v.port in NODE_PORT_RANGE else "clusterIP"
        services.append(ServicePort(f"{vip_key}/{v.protocol}", kind, v.vip, v.port,
                                    v.protocol, "ClientIP" if v.persistent else "None",
                                    "Cluster", tuple(sorted(eps, key=lambda e: e.endpoint)),
                                    "", v.scheduler))
    services.sort(key=lambda s: (s.service, s.kind, s.vip, s.port, s.protocol))
    return DeclaredModel("ipvs", tuple(services))
