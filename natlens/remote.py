"""``natlens --server URL``: report and query through a collector's HTTP API
(``--http``), so nobody has to ``kubectl exec`` into the collector to ask a question. The
answers are the same JSON the local commands print."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from natlens.errors import NatlensError


class RemoteError(NatlensError):
    """The collector's HTTP API did not answer the question; the message says why."""


class Remote:
    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"--server {url}: an http:// or https:// URL (the collector's "
                              "--http address)")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items()
                                        if v is not None and v != ""})
        req = urllib.request.Request(f"{self.url}{path}?{query}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace").strip().splitlines()
            why = body[0] if body else e.reason
            if e.code == 401:
                why = "missing or wrong token (natlens --server URL --token-file F)"
            raise RemoteError(f"{self.url}{path}: {e.code} {why}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RemoteError(f"{self.url}: cannot reach the collector's HTTP API "
                              f"({reason})") from None
        except ValueError as e:
            raise RemoteError(f"{self.url}{path}: not a natlens answer ({e})") from None


def remote_or_none(db: str | None) -> Remote | None:
    """The collector to ask when ``natlens --server URL`` was given, else None (and then
    ``--db`` is needed)."""
    obj = click.get_current_context().find_root().obj or {}
    server = obj.get("server")
    if server and db:
        raise click.UsageError("give --db (read the store) or natlens --server (ask a "
                               "collector), not both")
    if server:
        return Remote(server, obj.get("token"))
    if not db:
        raise click.UsageError("Missing option '--db' (or ask a collector: natlens --server "
                               "URL …)")
    return None
