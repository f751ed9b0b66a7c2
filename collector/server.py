"""Run the collector: a gRPC server in front of the store, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import Any

import grpc

from natlens.collector.ingest.servicer import CollectorServicer
from natlens.collector.store.db import Store
from natlens.proto import natlens_pb2_grpc as pb_grpc
from natlens.security import TlsFiles, TokenInterceptor, server_credentials

log = logging.getLogger("natlens.collector")


class ListenError(RuntimeError):
    """The gRPC address could not be bound."""


def start(store: Store, listen: str, max_streams: int = 64,
          credentials: grpc.ServerCredentials | None = None,
          token: str | None = None) -> tuple[grpc.Server, int]:
    """``credentials`` None listens in plaintext (``--insecure``); ``token`` makes every
    stream present ``authorization: Bearer TOKEN``."""
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = (
        [TokenInterceptor(token)] if token else [])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_streams),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    servicer = CollectorServicer(store)
    pb_grpc.add_CollectorServicer_to_server(servicer, server)
    try:
        port = (server.add_insecure_port(listen) if credentials is None
                else server.add_secure_port(listen, credentials))
    except RuntimeError as e:
        raise ListenError(f"cannot listen on {listen}: {e}") from None
    if port == 0:
        raise ListenError(f"cannot listen on {listen}: address in use or invalid")
    server.start()
    return server, port


def serve(db_path: str, listen: str, tls: TlsFiles | None = None,
          token: str | None = None) -> int:
    """``tls`` None is plaintext, which the CLI allows only with ``--insecure``."""
    credentials = server_credentials(tls) if tls is not None else None
    store = Store(db_path)
    server, port = start(store, listen, credentials=credentials, token=token)
    host = listen.rsplit(":", 1)[0]
    if tls is None:
        log.warning("--insecure: gRPC on %s:%d is plaintext%s; anyone who reaches it can "
                    "read and write", host, port, "" if token else " without a token")
    else:
        log.info("TLS on %s:%d%s%s", host, port,
                 ", client certificates required (mTLS)" if tls.ca else "",
                 ", bearer token required" if token else "")
    log.info("collector listening on %s:%d, storing into %s", host, port, db_path)
    print(f"listening {host}:{port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(grace=5).wait()
    store.close()
    log.info("collector stopped")
    return 0
