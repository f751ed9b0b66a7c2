"""Who may talk to the collector: TLS (mutual when a client CA is given) and a bearer token.

Both ends refuse plaintext unless told ``--insecure``, so an agent cannot silently ship
a node's connection log in the clear, and a collector cannot silently accept writes
from anyone who reaches its port. File problems are caught here, at start, with the
file named, rather than as an opaque handshake failure later.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from natlens.errors import NatlensError
from natlens.inputs import read_text

TOKEN_HEADER = "authorization"


class SecurityError(NatlensError, ValueError):
    """A TLS or token setting that cannot work; the message names the file or flag."""


@dataclass(frozen=True)
class TlsFiles:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None


def read_pem(path: str, what: str, marker: str = "-----BEGIN ") -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SecurityError(f"{what} {path}: {e.strerror}") from None
    if marker.encode() not in data:
        raise SecurityError(f"{what} {path}: not a PEM file")
    return data


def check_with_openssl(tls: TlsFiles) -> None:
    """Load the files as OpenSSL will (gRPC takes PEM bytes it does not check until the
    first handshake): a truncated or damaged certificate, a key that is not the
    certificate's, or a CA file without a usable certificate fails here, named."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca:
        try:
            ctx.load_verify_locations(cafile=tls.ca)
        except (ssl.SSLError, ValueError) as e:
            raise SecurityError(f"--tls-ca {tls.ca}: not a usable CA certificate "
                                f"({e.args[-1] if e.args else e})") from None
    if tls.cert and tls.key:
        try:
            ctx.load_cert_chain(tls.cert, tls.key)
        except (ssl.SSLError, ValueError) as e:
            raise SecurityError(f"--tls-cert {tls.cert} / --tls-key {tls.key}: not a usable "
                                f"certificate and key ({e.args[-1] if e.args else e})"
                                ) from None


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = read_text(path, "token file").strip()
    except NatlensError as e:
        raise SecurityError(str(e)) from None
    if not token or any(c.isspace() for c in token):
        raise SecurityError(f"token file {path}: expected one non-empty token without spaces")
    return token


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """TLS with the collector's certificate; with a CA, clients must present a
    certificate it signed (mutual TLS)."""
    if not tls.cert or not tls.key:
        raise SecurityError("--tls-cert and --tls-key go together")
    pair = (read_pem(tls.key, "--tls-key", "PRIVATE KEY"), read_pem(tls.cert, "--tls-cert"))
    ca = read_pem(tls.ca, "--tls-ca") if tls.ca else None
    check_with_openssl(tls)
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Verify the collector against the CA; present our certificate when given."""
    if bool(tls.cert) != bool(tls.key):
        raise SecurityError("--tls-cert and --tls-key go together")
    if not tls.ca:
        raise SecurityError("--tls-ca is needed to verify the collector")
    key = read_pem(tls.key, "--tls-key", "PRIVATE KEY") if tls.key else None
    cert = read_pem(tls.cert, "--tls-cert") if tls.cert else None
    ca = read_pem(tls.ca, "--tls-ca")
    check_with_openssl(tls)
    return grpc.ssl_channel_credentials(ca, key, cert)


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuse every call whose ``authorization`` metadata is not ``Bearer TOKEN``."""

    def __init__(self, token: str) -> None:
        self._want = f"Bearer {token}".encode()
        self.refused = 0

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny = grpc.stream_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        got = dict(details.invocation_metadata or ()).get(TOKEN_HEADER, "")
        if hmac.compare_digest(got.encode() if isinstance(got, str) else got, self._want):
            return continuation(details)
        self.refused += 1
        return self._deny


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_HEADER, f"Bearer {token}"),) if token else ()
