"""Run the collector: a gRPC server in front of the store, until SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from natlens.collector.ingest.limits import Limits
from natlens.collector.ingest.servicer import CollectorServicer
from natlens.collector.store.api import Store, StoreUnavailable
from natlens.collector.store.open import open_store, redact
from natlens.collector.store.retention import Maintenance, Policy
from natlens.collector.web.judgement import JudgementCollector
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
    # SO_REUSEPORT off: gRPC sets it by default, and a second collector on the same
    # address would then start and take half the agents' streams into another store.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_streams),
                         interceptors=interceptors, maximum_concurrent_rpcs=max_streams,
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.so_reuseport", 0)])
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
    metrics_window_s: float = 900.0      # the judgement gauges' window
    metrics_services: tuple[str, ...] = ()
    metrics_max_services: int = 1000
    kubeconfig: str | None = None        # a file, "in-cluster", or None: no watch
    limits: Limits = field(default_factory=Limits)
    max_streams: int = 64
    max_message_bytes: int = 64 << 20
    read_only: bool = False              # serve the HTTP side only, change nothing


def serve(cfg: CollectorConfig) -> int:
    """Run until SIGTERM/SIGINT. The HTTP side is bound first, then gRPC, so an address
    in use fails the start before anything runs; everything stops in reverse order."""
    with contextlib.ExitStack() as running:
        store = open_store(cfg.db, read_only=cfg.read_only)
        running.callback(store.close)
        metrics = IngestMetrics(store.size_bytes, cfg.metrics_max_series)
        metrics.registry.register(JudgementCollector(
            lambda: open_store(cfg.db, read_only=True), cfg.metrics_window_s,
            cfg.metrics_services, cfg.metrics_max_services))
        probes = Probes()
        web = None
        if cfg.http is not None:
            web = serve_http(lambda: open_store(cfg.db, read_only=True), cfg.http[0],
                             cfg.http[1], metrics, probes, cfg.http_token)
            running.callback(web.shutdown)
            log.info("dashboard, /metrics and probes on http://%s:%d/",
                     *web.server_address[:2])
        if cfg.read_only:
            log.info("read-only: serving %s as it is (no ingest, retention or rollups)",
                     redact(cfg.db))
        else:
            _ingest(cfg, store, metrics, probes, running)
        probes.ready = True
        if web is not None:
            print(f"http {web.server_address[0]!s}:{web.server_address[1]}", flush=True)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        done.wait()
    log.info("collector stopped")
    return 0


def check_free(listen: str) -> None:
    """Fail in one line when another process listens on ``listen`` (gRPC's own bind
    error comes with a page of its log). SO_REUSEADDR, as gRPC binds: connections of a
    collector that just died linger in TIME_WAIT and must not keep its successor out;
    only a listening socket does."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise ListenError(f"cannot listen on {listen}: {e.strerror}") from None


def _unreachable(store: Store) -> str | None:
    try:
        store.ping()
    except StoreUnavailable as e:
        return f"store unreachable: {e}"
    return None


def _ingest(cfg: CollectorConfig, store: Store, metrics: IngestMetrics, probes: Probes,
            running: contextlib.ExitStack) -> None:
    """The gRPC server, retention and the Kubernetes watch, each stopped by ``running``."""
    credentials = server_credentials(cfg.tls) if cfg.tls is not None else None
    check_free(cfg.listen)
    server, port = start(store, cfg.listen, cfg.max_streams, credentials=credentials,
                         token=cfg.token, observe=metrics.observe, limits=cfg.limits,
                         max_message_bytes=cfg.max_message_bytes)
    running.callback(lambda: server.stop(grace=5).wait())
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
    running.callback(maintenance.stop)
    probes.problem = lambda: (f"retention: {maintenance.last_error}"
                              if maintenance.last_error else None)
    probes.unready = lambda: _unreachable(store)
    if cfg.kubeconfig is not None:
        from natlens.collector.k8s.watch import Watcher, api_client

        watcher = Watcher(store, api_client(None if cfg.kubeconfig == "in-cluster"
                                            else cfg.kubeconfig))
        watcher.start()
        running.callback(watcher.stop)
        log.info("k8s: watching pods, services and endpointslices (%s)", cfg.kubeconfig)
    log.info("collector listening on %s:%d, storing into %s (decisions kept %s, rollups %s)",
             host, port, redact(cfg.db), _days(cfg.policy.decisions_ns),
             _days(cfg.policy.rollups_ns))
    print(f"listening {host}:{port}", flush=True)


def _days(ns: int) -> str:
    return f"{ns / 86400e9:g}d"
