"""Run the collector: a gRPC server in front of the store, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc

from natlens.collector.ingest.servicer import CollectorServicer
from natlens.collector.store.db import Store
from natlens.proto import natlens_pb2_grpc as pb_grpc

log = logging.getLogger("natlens.collector")


class ListenError(RuntimeError):
    """The gRPC address could not be bound."""


def start(store: Store, listen: str, max_streams: int = 64) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_streams),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    servicer = CollectorServicer(store)
    pb_grpc.add_CollectorServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as e:
        raise ListenError(f"cannot listen on {listen}: {e}") from None
    if port == 0:
        raise ListenError(f"cannot listen on {listen}: address in use or invalid")
    server.start()
    return server, port


def serve(db_path: str, listen: str) -> int:
    store = Store(db_path)
    server, port = start(store, listen)
    host = listen.rsplit(":", 1)[0]
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
