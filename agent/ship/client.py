"""Deliver batches to the collector over one gRPC stream, keeping each until acked.

A batch leaves memory only when the collector acknowledges it (after its commit).
When the collector is unreachable the agent says so once, keeps what it has and
reconnects with jittered exponential backoff, resending every unacknowledged batch;
the collector stores each (agent, boot, seq) once, so a resend is harmless.

Given several collectors (``A:7070,B:7070``, replicas sharing one PostgreSQL store), the
agent streams to one and, when that stream fails, goes straight on to the next; the
backoff applies once every address has failed in turn.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from natlens.agent.ship.spool import Spool
from natlens.proto import natlens_pb2 as pb
from natlens.proto import natlens_pb2_grpc as pb_grpc
from natlens.proto.columns import count
from natlens.security import token_metadata

log = logging.getLogger("natlens.agent.ship")


def explain(detail: str, tls: bool) -> str:
    """A hint for the failures whose gRPC text does not say what to check."""
    if "Socket closed" in detail or "Connection reset" in detail:
        if tls:
            return (" — the collector ended the TLS handshake: does its --tls-ca trust this "
                    "agent's --tls-cert?")
        return " — the collector closed the connection: does it expect TLS (--tls-ca)?"
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return " — the collector's certificate is not trusted by --tls-ca, or has expired"
    if "WRONG_VERSION_NUMBER" in detail:
        return " — the collector does not speak TLS (started with --insecure?)"
    return ""


class Shipper:
    def __init__(self, target: str, max_pending: int = 10_000,
                 backoff: tuple[float, float] = (0.2, 30.0),
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None, server_name: str | None = None,
                 spool: Spool | None = None,
                 degrade: Callable[[pb.Batch], pb.Batch] | None = None) -> None:
        """``credentials`` None is plaintext (``--insecure``); ``server_name`` checks the
        collector's certificate for that name instead of the target's host. With a
        ``spool`` every batch is on disk until acknowledged (and memory holds no more
        than the spool does); a batch that does not fit is first ``degrade``d."""
        self.targets = [t.strip() for t in target.split(",") if t.strip()]
        self._at = 0  # which of targets this agent streams to
        self.credentials = credentials
        self.metadata = token_metadata(token)
        self.options: list[tuple[str, Any]] = [("grpc.max_send_message_length", 64 << 20),
                                               ("grpc.keepalive_time_ms", 30_000)]
        if server_name:
            self.options.append(("grpc.ssl_target_name_override", server_name))
        self.max_pending = max_pending
        self.backoff = backoff
        self.spool, self.degrade = spool, degrade
        self.unspooled = 0
        # (boot id, seq) → (send order, batch): a restarted agent resends the previous
        # run's spooled batches, whose sequence numbers restart from 1 in a new boot.
        self._unacked: OrderedDict[tuple[str, int], tuple[int, pb.Batch]] = OrderedDict()
        self._order = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ship", daemon=True)
        self.dropped_decisions = 0
        self.sent = self.acked = self.send_errors = 0
        self._call: Any = None  # the running stream call, cancelled by stop()
        self._tried = 0  # addresses that failed since the last acknowledgement

    @property
    def target(self) -> str:
        return self.targets[self._at]

    def start(self) -> None:
        if self.spool is not None:
            old = self.spool.load()
            if old:
                log.info("spool: resending %d unacknowledged batches (%d bytes) from %s",
                         len(old), self.spool.bytes, self.spool.dir)
            with self._cond:
                for b in old:
                    self._queue(b)
        self._thread.start()

    def _queue(self, batch: pb.Batch) -> None:
        self._order += 1
        self._unacked[(batch.boot_id, batch.seq)] = (self._order, batch)
        self._cond.notify_all()

    def submit(self, batch: pb.Batch) -> None:
        if self.spool is not None:
            if not self.spool.put(batch):
                if self.degrade is not None and count(batch):
                    batch = self.degrade(batch)
                if not self.spool.put(batch):
                    self.unspooled += 1
                    log.error("spool full (%d of %d bytes): batch %d kept in memory only",
                              self.spool.bytes, self.spool.max_bytes, batch.seq)
            with self._cond:
                self._queue(batch)
            return
        with self._cond:
            while len(self._unacked) >= self.max_pending:
                _, (_, old) = self._unacked.popitem(last=False)
                self.dropped_decisions += count(old)
                log.error("delivery queue full (%d batches): dropped batch %d with %d "
                          "decisions", self.max_pending, old.seq, count(old))
            self._queue(batch)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._unacked)

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted batch is acknowledged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unacked:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    def _failed_over(self) -> bool:
        """Move to the next collector; False once every address failed in a row (then
        the caller backs off before the round starts again)."""
        failed = self.target
        self._at = (self._at + 1) % len(self.targets)
        if self._tried % len(self.targets):
            if self._tried == 1:  # once per outage; later rounds are the backoff's
                log.warning("collector %s failed; failing over to %s", failed, self.target)
            return True
        return False

    def _requests(self, ended: threading.Event) -> Iterator[pb.Batch]:
        sent_upto = 0
        while not ended.is_set() and not self._stop.is_set():
            with self._cond:
                todo = [(o, b) for o, b in self._unacked.values() if o > sent_upto]
                if not todo:
                    # Woken by a new batch, by stop(), or when the call ended (_run);
                    # the timeout is only a backstop, so a quiet agent sleeps.
                    self._cond.wait(5.0)
                    continue
            for o, b in todo:
                sent_upto = o
                self.sent += 1
                yield b

    def _run(self) -> None:
        delay = self.backoff[0]
        down_since: float | None = None
        said_plain = False
        while not self._stop.is_set():
            ended = threading.Event()
            channel = (grpc.insecure_channel(self.target, options=self.options)
                       if self.credentials is None else
                       grpc.secure_channel(self.target, self.credentials, options=self.options))
            try:
                stub = pb_grpc.CollectorStub(channel)
                call = stub.Upload(self._requests(ended), wait_for_ready=False,
                                   metadata=self.metadata)
                self._call = call
                for ack in call:
                    if not self.acked and self.credentials is None and not said_plain:
                        said_plain = True
                        log.warning("--insecure: shipping to %s in plaintext", self.target)
                    if down_since is not None:
                        log.warning("collector %s reachable again after %.1fs; resending "
                                    "unacknowledged batches", self.target,
                                    time.monotonic() - down_since)
                        down_since = None
                    delay = self.backoff[0]
                    self._tried = 0
                    with self._cond:
                        if self._unacked.pop((ack.boot_id, ack.seq), None) is not None:
                            self.acked += 1
                            if self.spool is not None:
                                self.spool.remove(ack.boot_id, ack.seq)
                        self._cond.notify_all()
            except grpc.RpcError as e:
                self._tried += 1
                # The exception is the call itself, and its traceback holds the frames
                # that hold the call: a cycle that only the garbage collector frees, maybe
                # at interpreter exit, when the call's __del__ can wait forever for a lock
                # that a stopped gRPC thread still holds (an agent hung after "stopped:").
                e.__traceback__ = None
                if self._stop.is_set():
                    break
                self.send_errors += 1
                if down_since is None:
                    down_since = time.monotonic()
                    code = e.code() if hasattr(e, "code") else None
                    detail = e.details() if hasattr(e, "details") else str(e)
                    log.error("collector %s unreachable (%s: %s)%s; keeping %d batches and "
                              "retrying with backoff", self.target,
                              code.name if code else "error", detail,
                              explain(detail or "", self.credentials is not None),
                              self.pending)
            finally:
                ended.set()
                with self._cond:
                    self._cond.notify_all()  # the request generator returns
                self._call = call = None
                channel.close()
            if len(self.targets) > 1 and self._failed_over():
                continue
            if self._stop.wait(delay * random.uniform(0.5, 1.5)):
                break
            delay = min(delay * 2, self.backoff[1])
