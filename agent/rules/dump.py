"""A rules dump of any mode → the declared model; the mode detected from the text."""

from __future__ import annotations

from natlens.agent.rules.iptables import parse_iptables_save
from natlens.agent.rules.ipvs import parse_ipvs
from natlens.agent.rules.model import DeclaredModel
from natlens.agent.rules.nftables import parse_nft


def detect_mode(text: str) -> str:
    head = text.lstrip()
    if head.startswith(("table ", "{")):
        return "nftables"
    if head.startswith(("IP Virtual Server", "Prot LocalAddress", "-A ", "TCP  ", "UDP  ",
                        "SCTP ")):
        return "ipvs"
    return "iptables"


def parse_dump(text: str, mode: str = "auto") -> DeclaredModel:
    if mode == "auto":
        mode = detect_mode(text)
    parse = {"nftables": parse_nft, "ipvs": parse_ipvs}.get(mode, parse_iptables_save)
    return parse(text)
