"""The one base class of the errors that are the user's to fix.

``natlens`` prints such an error as one line (``natlens: error: …``) and exits 1; any
other exception is a bug and keeps its traceback. Modules raise their own subclasses
(a rules dump that does not parse, a collector address in use, …), so the command line
needs no list of them.
"""

from __future__ import annotations


class NatlensError(Exception):
    """A failure the message explains in one line; exit status 1."""
