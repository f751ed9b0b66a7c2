"""Run the collector: a gRPC server in front of the store, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from natlens.collector.ingest.limits import Limits
from natlens.collector.ingest.servicer import CollectorServicer
from natlens.collector.store.api import Store
from natlens.collector.store.open import open_store
from natlens.collector.store.retention import Maintenance, Policy
from natlens.collector.web.metrics import IngestMetrics
from natlens.collector.web.server import Probes, serve_http
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb
from natlens.proto import natlens_pb2_grpc as pb_grpc
from natlens.security import TlsFiles, TokenInterceptor, server_credentials

log = logging.getLogger("natlens.collector")


class ListenError(NatlensError, RuntimeError):
    """The gRPC address could not be bound."""


def start(store: Store, listen: str, max_streams: int = 64,
          credentials: grpc.ServerCredentials | None = None,
          token: str | None = None,
          observe: Callable[[pb.Batch, str], None] | None = None,
          limits: Limits | None = None,
          max_message_bytes: int = 64 << 20) -> tuple[grpc.Server, int]:
    """``credentials`` None listens in plaintext (``--insecure``); ``token`` makes every
    stream present ``authorization: Bearer TOKEN``."""
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = (
        [TokenInterceptor(token)] if token else [])
    # One thread per agent stream; more streams than that are refused by gRPC itself
    # (RESOURCE_EXHAUSTED), so a flood of connections cannot queue without bound.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_streams),
                         interceptors=interceptors, maximum_concurrent_rpcs=max_streams,
                         options=[("grpc.max_receive_message_length", max_message_bytes)])
    servicer = CollectorServicer(store, observe, limits)
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


@dataclass(frozen=True, kw_only=True)
class CollectorConfig:
    db: str
    listen: str
    tls: TlsFiles | None = None          # None: plaintext (--insecure)
    token: str | None = None
    http: tuple[str, int] | None = None  # --http HOST:PORT
    http_token: str | None = None
    policy: Policy = field(default_factory=Policy)
    maintenance_interval: float = 60.0
    metrics_max_series: int = 10_000
    kubeconfig: str | None = None        # a file, "in-cluster", or None: no watch
    limits: Limits = field(default_factory=Limits)
    max_streams: int = 64
    max_message_bytes: int = 64 << 20


def serve(cfg: CollectorConfig) -> int:
    credentials = server_credentials(cfg.tls) if cfg.tls is not None else None
    store = open_store(cfg.db)
    metrics = IngestMetrics(store.size_bytes, cfg.metrics_max_series)
    server, port = start(store, cfg.listen, cfg.max_streams, credentials=credentials,
                         token=cfg.token, observe=metrics.observe, limits=cfg.limits,
                         max_message_bytes=cfg.max_message_bytes)
    host = cfg.listen.rsplit(":", 1)[0]
    if cfg.tls is None:
        log.warning("--insecure: gRPC on %s:%d is plaintext%s; anyone who reaches it can "
                    "read and write", host, port, "" if cfg.token else " without a token")
    else:
        log.info("TLS on %s:%d%s%s", host, port,
                 ", client certificates required (mTLS)" if cfg.tls.ca else "",
                 ", bearer token required" if cfg.token else "")
    maintenance = Maintenance(store, cfg.policy, cfg.maintenance_interval)
    maintenance.start()
    probes = Probes()
    probes.problem = lambda: (f"retention: {maintenance.last_error}"
                              if maintenance.last_error else None)
    watcher = None
    if cfg.kubeconfig is not None:
        from natlens.collector.k8s.watch import Watcher, api_client

        watcher = Watcher(store, api_client(None if cfg.kubeconfig == "in-cluster"
                                            else cfg.kubeconfig))
        watcher.start()
        log.info("k8s: watching pods, services and endpointslices (%s)", cfg.kubeconfig)
    web = None
    if cfg.http is not None:
        web = serve_http(lambda: open_store(cfg.db, read_only=True), cfg.http[0], cfg.http[1],
                         metrics, probes, cfg.http_token)
        log.info("dashboard, /metrics and probes on http://%s:%d/", *web.server_address[:2])
    probes.ready = True
    log.info("collector listening on %s:%d, storing into %s (decisions kept %s, rollups %s)",
             host, port, cfg.db, _days(cfg.policy.decisions_ns), _days(cfg.policy.rollups_ns))
    print(f"listening {host}:{port}", flush=True)
    if web is not None:
        print(f"http {web.server_address[0]!s}:{web.server_address[1]}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(grace=5).wait()
    if watcher is not None:
        watcher.stop()
    maintenance.stop()
    if web is not None:
        web.shutdown()
    store.close()
    log.info("collector stopped")
    return 0


def _days(ns: int) -> str:
    return f"{ns / 86400e9:g}d"
