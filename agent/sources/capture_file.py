"""Read a capture file (pcap or pcapng, as scapy reads them) as a stream of first
packets: constant memory for files of any size, and a clear account of what could not
be read (a truncated or corrupt tail keeps everything before it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from natlens.agent.decode.packets import FirstPacket, first_packet
from natlens.errors import NatlensError


class CaptureError(NatlensError, ValueError):
    """The file is not a capture natlens can read at all; the message says why."""


@dataclass
class ReadStats:
    frames: int = 0
    first_packets: int = 0
    truncated_at: int | None = None   # byte offset where reading stopped early
    size: int = 0


def _open(path: str) -> Any:
    import logging

    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapReader

    # scapy warns on stderr about a cut record; natlens says it once, in its own words
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror}") from None
    if size == 0:
        raise CaptureError(f"{path}: empty file, not a capture")
    try:
        return RawPcapReader(path)
    except Scapy_Exception as e:
        raise CaptureError(f"{path}: not a pcap or pcapng capture ({e})") from None
    except (EOFError, OSError, ValueError) as e:
        raise CaptureError(f"{path}: not a pcap or pcapng capture ({e})") from None


def _is_ng(reader: Any) -> bool:
    from scapy.utils import RawPcapNgReader

    return isinstance(reader, RawPcapNgReader)


def _incomplete_from(path: str, pos: int, size: int, ng_endian: str | None) -> int | None:
    """Where the file stops being whole after the last packet read, or None. pcap: any
    byte left over is a cut record. pcapng: what follows must be whole blocks (a file
    may end in statistics blocks after its last packet)."""
    if pos >= size:
        return None
    if ng_endian is None:
        return pos
    import struct

    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                return pos
            length = struct.unpack(ng_endian + "I", head[4:8])[0]
            if length < 12 or length % 4 or pos + length > size:
                return pos
            pos += length
    return None


def read_first_packets(path: str, stats: ReadStats,
                       progress: Callable[[int], None] | None = None,
                       ) -> Iterator[FirstPacket]:
    reader = _open(path)
    stats.size = os.path.getsize(path)
    try:
        pcap_linktype = getattr(reader, "linktype", None)
        nano = getattr(reader, "nano", False)
        good = reader.f.tell()  # the end of the last whole packet (or of the header)
        while True:
            try:
                frame, meta = next(reader)
            except StopIteration:
                break
            except Exception:  # a corrupt block mid-file: keep what came before
                break
            if len(frame) < getattr(meta, "caplen", len(frame)):
                stats.truncated_at = good  # the last record is cut short: not used
                break
            good = reader.f.tell()
            stats.frames += 1
            if hasattr(meta, "tshigh"):  # pcapng: per-interface link type and resolution
                linktype = meta.linktype
                t = ((meta.tshigh << 32) | meta.tslow) * 10**9 // (meta.tsresol or 10**6)
            else:
                linktype = pcap_linktype
                t = meta.sec * 10**9 + meta.usec * (1 if nano else 1000)
            p = first_packet(linktype, frame, t)
            if p is not None:
                stats.first_packets += 1
                yield p
            if progress is not None and stats.frames % 4096 == 0:
                progress(reader.f.tell())
        if stats.truncated_at is None:
            stats.truncated_at = _incomplete_from(path, good, stats.size,
                                                  getattr(reader, "endian", None)
                                                  if _is_ng(reader) else None)
    finally:
        reader.close()
