"""Watch Pods, Services and EndpointSlices with the official client (list, then watch
from the list's resourceVersion with bookmarks; after ``410 Gone``, list again).

What it writes: for every pod IP and ClusterIP, the interval during which it belonged
to which object (``pods``, ``services``), so a report about last Tuesday names the pod
that had the IP then; and, when a Service's endpoint set changes, a rules epoch on every
node (the store's ``add_k8s_epoch``), so decisions made before and after the change are
never judged together even before kube-proxy has rewritten the rules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from natlens.collector.k8s.state import (
    Holder,
    Owners,
    endpoint_set,
    pod_ips,
    service_ips,
    slice_service,
)
from natlens.collector.store.api import Store
from natlens.errors import NatlensError

log = logging.getLogger("natlens.collector.k8s")
GONE = 410


class KubeconfigError(NatlensError):
    """The kubeconfig (or the pod's service account) cannot be used; says why."""


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """From a kubeconfig file, or the in-cluster service account when None."""
    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        config.load_incluster_config()
    except (config.ConfigException, ValueError, TypeError, AttributeError, KeyError,
            OSError, yaml.YAMLError) as e:
        where = kubeconfig or "the in-cluster service account"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KubeconfigError(f"{where}: not a usable kubeconfig ({first})") from None
    return client.ApiClient()


class Watcher:
    """One thread per resource; ``synced`` is set once each has listed once."""

    def __init__(self, store: Store, api: client.ApiClient, watch_timeout: int = 300,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store, self.api, self.clock = store, api, clock
        self.watch_timeout = watch_timeout
        core, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        self.resources: dict[str, tuple[Callable[..., Any], Callable[[str, dict[str, Any]],
                                                                      None]]] = {
            "pods": (core.list_pod_for_all_namespaces, self._pod),
            "services": (core.list_service_for_all_namespaces, self._service),
            "endpointslices": (disc.list_endpoint_slice_for_all_namespaces, self._slice)}
        self.pods, self.services = Owners(), Owners()
        self.slices: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        self.endpoint_sets: dict[tuple[str, str], str] = {}
        self.relists: dict[str, int] = dict.fromkeys(self.resources, 0)
        self.bookmarks: dict[str, int] = dict.fromkeys(self.resources, 0)
        self.synced = {r: threading.Event() for r in self.resources}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watches: list[watch.Watch] = []
        self.last_error: str | None = None

    # ------------------------------------------------------------------ events

    def _pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        holder = Holder(meta.get("namespace", ""), meta["name"],
                        (pod.get("spec") or {}).get("nodeName") or "")
        ips = frozenset() if kind == "DELETED" else pod_ips(pod)
        opened, closed = self.pods.update(meta["uid"], holder, ips)
        self.store.pod_intervals(opened, closed, self.clock())

    def _service(self, kind: str, svc: dict[str, Any]) -> None:
        meta = svc["metadata"]
        holder = Holder(meta.get("namespace", ""), meta["name"])
        ips = frozenset() if kind == "DELETED" else service_ips(svc)
        opened, closed = self.services.update(meta["uid"], holder, ips)
        self.store.service_intervals(opened, closed, self.clock())

    def _slice(self, kind: str, es: dict[str, Any]) -> None:
        svc = slice_service(es)
        if svc is None:
            return
        uid = es["metadata"]["uid"]
        if kind == "DELETED":
            self.slices[svc].pop(uid, None)
        else:
            self.slices[svc][uid] = es
        self._endpoints_changed(svc)

    def _endpoints_changed(self, svc: tuple[str, str]) -> None:
        now = endpoint_set(list(self.slices[svc].values()))
        before = self.endpoint_sets.get(svc)
        self.endpoint_sets[svc] = now
        if before is not None and before != now:
            self.store.add_k8s_epoch(svc[0], svc[1], now, self.clock())

    # ------------------------------------------------------------------ loop

    def _list(self, name: str) -> str:
        lister, handle = self.resources[name]
        resp = lister(_preload_content=False)
        data = self.api.sanitize_for_serialization(_json(resp))
        items = data.get("items") or []
        with self._lock:
            if self._stop.is_set():
                return str(data.get("metadata", {}).get("resourceVersion", ""))
            if name == "pods":
                self.store.pod_intervals([], self.pods.forget_missing(
                    {i["metadata"]["uid"] for i in items}), self.clock())
            elif name == "services":
                self.store.service_intervals([], self.services.forget_missing(
                    {i["metadata"]["uid"] for i in items}), self.clock())
            else:
                listed = {i["metadata"]["uid"] for i in items}
                for svc in list(self.slices):
                    for uid in [u for u in self.slices[svc] if u not in listed]:
                        del self.slices[svc][uid]
                    self._endpoints_changed(svc)
            for item in items:
                handle("ADDED", item)
        self.synced[name].set()
        return str(data["metadata"]["resourceVersion"])

    def _follow(self, name: str) -> None:
        lister, handle = self.resources[name]
        rv = self._list(name)
        while not self._stop.is_set():
            w = watch.Watch()
            self._watches.append(w)
            try:
                # deserialize=True: the client reads 410 ERROR events only in that mode
                for ev in w.stream(lister, resource_version=rv, allow_watch_bookmarks=True,
                                   timeout_seconds=self.watch_timeout):
                    obj = ev["raw_object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] == "BOOKMARK":
                        self.bookmarks[name] += 1
                        continue
                    with self._lock:
                        if self._stop.is_set():  # stopped: the store may be closing
                            return
                        handle(ev["type"], obj)
            except ApiException as e:
                if e.status != GONE:
                    raise
                log.info("k8s: %s watch expired (410 Gone at %s); listing again", name, rv)
                self.relists[name] += 1
                rv = self._list(name)
            finally:
                self._watches.remove(w)

    def _run(self, name: str) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self._follow(name)
            except Exception as e:  # the API server away or refusing: retry, say once
                if self._stop.is_set():
                    return
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if msg != self.last_error:
                    log.error("k8s: %s: %s; retrying", name, msg)
                self.last_error = msg
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def start(self) -> None:
        for name in self.resources:
            threading.Thread(target=self._run, args=(name,), name=f"k8s-{name}",
                             daemon=True).start()

    def stop(self) -> None:
        """Once this returns no event is being written, and none will be: a watch still
        blocked reading its stream drops what it reads (the store is closed next)."""
        self._stop.set()
        for w in list(self._watches):
            w.stop()
        with self._lock:
            pass


def _json(resp: Any) -> dict[str, Any]:
    import json

    body = resp.data
    return dict(json.loads(body.decode() if isinstance(body, bytes) else body))
