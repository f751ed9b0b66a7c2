"""Reading what a user hands natlens (a rules dump, a scenario, a token): any file,
whatever it holds, is read or refused in one line, never with a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from natlens.errors import NatlensError


def read_text(path: str, what: str = "") -> str:
    """A text file's content, or one line saying why not (a directory, unreadable, not
    text: binary, or not UTF-8). ``-`` is standard input."""
    name = f"{what} {path}".strip()
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except IsADirectoryError:
        raise NatlensError(f"{name}: a directory, not a file") from None
    except OSError as e:
        raise NatlensError(f"{name}: {e.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise NatlensError(f"{name}: not a text file (byte {e.start} is not UTF-8)") from None
    if "\0" in text:
        raise NatlensError(f"{name}: not a text file (it holds NUL bytes)")
    return text
