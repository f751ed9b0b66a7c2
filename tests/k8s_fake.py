"""A local HTTP server speaking the Kubernetes API's list/watch wire format.

There is no API server on these machines, so the collector's watch is tested against
this instead of mocks of the client library: real HTTP, JSON objects as the API returns
them, watch streams as chunked ``{"type": …, "object": …}`` lines, ``BOOKMARK`` events,
and ``410 Gone`` for a resourceVersion older than the retained history (in the stream
as an ``ERROR`` Status, as the API server sends it).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATHS = {"/api/v1/pods": ("pods", "PodList", "Pod", "v1"),
         "/api/v1/services": ("services", "ServiceList", "Service", "v1"),
         "/apis/discovery.k8s.io/v1/endpointslices": (
             "endpointslices", "EndpointSliceList", "EndpointSlice", "discovery.k8s.io/v1")}


def pod(name: str, ip: str | list[str], uid: str | None = None, node: str = "k8s-node1",
        namespace: str = "istio-demo", phase: str = "Running") -> dict[str, Any]:
    ips = [ip] if isinstance(ip, str) else ip
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}",
                         "labels": {"app": name.split("-")[0]}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]}}


def service(name: str, cluster_ip: str, namespace: str = "istio-demo") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-svc-{name}"},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                     "ports": [{"name": "http", "port": 9999, "protocol": "TCP",
                                "targetPort": 80}]}}


def endpoint_slice(service_name: str, addresses: list[str], suffix: str = "abcde",
                   namespace: str = "istio-demo") -> dict[str, Any]:
    return {"metadata": {"name": f"{service_name}-{suffix}", "namespace": namespace,
                         "uid": f"uid-es-{service_name}-{suffix}",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}


class FakeApiServer:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r[0]: {} for r in PATHS.values()}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {
            r[0]: [] for r in PATHS.values()}
        self.oldest: dict[str, int] = {r[0]: 0 for r in PATHS.values()}
        self.cond = threading.Condition()
        self.generation = 0           # bumped to end every open watch stream
        self.requests: list[str] = []
        self.gone_sent = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                url = urlsplit(self.path)
                if url.path not in PATHS:
                    self._json(404, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                     "status": "Failure", "reason": "NotFound", "code": 404})
                    return
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if q.get("watch") in ("true", "1"):
                    fake._watch(self, PATHS[url.path], q)
                else:
                    self._json(200, fake._list(PATHS[url.path]))

            def _json(self, code: int, obj: dict[str, Any]) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ control

    def apply(self, resource: str, kind: str, obj: dict[str, Any]) -> int:
        """ADDED/MODIFIED/DELETED ``obj``; returns its new resourceVersion."""
        with self.cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                self.objects[resource].pop(uid, None)
            else:
                self.objects[resource][uid] = obj
            self.history[resource].append((self.rv, kind, obj))
            self.cond.notify_all()
            return self.rv

    def compact(self) -> None:
        """Forget the event history: a watch from an older version now gets 410."""
        with self.cond:
            for r in self.history:
                self.history[r].clear()
                self.oldest[r] = self.rv
            self.cond.notify_all()

    def drop_watches(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def kubeconfig(self, path: Path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "natlens", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "natlens"}}]}))
        return str(path)

    def close(self) -> None:
        self.drop_watches()
        self.server.shutdown()

    # ------------------------------------------------------------------ wire

    def _list(self, spec: tuple[str, str, str, str]) -> dict[str, Any]:
        resource, list_kind, _, api_version = spec
        with self.cond:
            return {"kind": list_kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": [copy.deepcopy(o) for o in self.objects[resource].values()]}

    def _watch(self, h: BaseHTTPRequestHandler, spec: tuple[str, str, str, str],
               q: dict[str, str]) -> None:
        resource, _, kind, api_version = spec
        since = int(q.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 60)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            with self.cond:
                gen = self.generation
                if since < self.oldest[resource]:
                    self.gone_sent += 1
                    chunk({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": f"too old resource version: {since} ({self.rv})"}})
                    h.wfile.write(b"0\r\n\r\n")
                    return
            sent = since
            last_bookmark = time.monotonic()
            while time.monotonic() < deadline:
                bookmark = None
                with self.cond:
                    if self.generation != gen:
                        break
                    events = [(rv, t, o) for rv, t, o in self.history[resource] if rv > sent]
                    if not events:
                        if bookmarks and time.monotonic() - last_bookmark > 0.5:
                            bookmark = self.rv  # nothing pending for this resource up to it
                        else:
                            self.cond.wait(0.2)
                for rv, t, o in events:
                    chunk({"type": t, "object": {"kind": kind, "apiVersion": api_version,
                                                 **o}})
                    sent = rv
                if bookmark is not None:
                    chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(bookmark)}}})
                    sent = max(sent, bookmark)
                    last_bookmark = time.monotonic()
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
