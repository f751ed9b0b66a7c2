"""A rules dump of any mode → the declared model; the mode detected from the text."""

from __future__ import annotations

from natlens.agent.rules.model import DeclaredModel


def detect_mode(text: str) -> str:
    head = text.lstrip()
    if head.startswith(("table ", "{")):
        return "nftables"
    if head.startswith(("IP Virtual Server", "Prot LocalAddress", "-A ", "TCP  ", "UDP  ",
                        "SCTP ")):
        return "ipvs"
    return "iptables"


def parse_dump(text: str, mode: str = "auto") -> DeclaredModel:
    """Only the parser of the mode is imported (``rules parse`` starts that much
    sooner)."""
    if mode == "auto":
        mode = detect_mode(text)
    if mode == "nftables":
        from natlens.agent.rules.nftables import parse_nft

        return parse_nft(text)
    if mode == "ipvs":
        from natlens.agent.rules.ipvs import parse_ipvs

        return parse_ipvs(text)
    from natlens.agent.rules.iptables import parse_iptables_save

    return parse_iptables_save(text)
