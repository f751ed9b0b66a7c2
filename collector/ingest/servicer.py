"""The gRPC servicer: decode, hand the batch to the store, acknowledge. Nothing more."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc

from natlens.collector.ingest.limits import Limits, OverLimit, RateLimiter, batch_records
from natlens.collector.store.api import BatchRejected, Store, StoreUnavailable
from natlens.proto import natlens_pb2 as pb
from natlens.proto import natlens_pb2_grpc as pb_grpc
from natlens.proto.columns import count

log = logging.getLogger("natlens.collector.ingest")


class CollectorServicer(pb_grpc.CollectorServicer):  # type: ignore[misc]
    def __init__(self, store: Store,
                 observe: Callable[[pb.Batch, str], None] | None = None,
                 limits: Limits | None = None) -> None:
        """``observe(batch, result)`` sees every batch after the store's answer
        (``stored``, ``duplicate``, ``rejected``): the metrics."""
        self.store = store
        self.limiter = RateLimiter(limits or Limits())
        self.observe = observe or (lambda _b, _r: None)
        self.batches = self.duplicates = self.rejected = 0

    def Upload(self, request_iterator: Iterator[pb.Batch],
               context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        peer = context.peer()
        for batch in request_iterator:
            n = batch_records(count(batch), len(batch.counters), len(batch.rules),
                              len(batch.lost))
            try:
                wait = self.limiter.wait_for(batch.agent_id, n)
            except OverLimit as e:
                self.rejected += 1
                self.observe(batch, "rejected")
                log.warning("refused batch %d from %s (%s): %s", batch.seq,
                            batch.agent_id or "?", peer, e)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            if wait and not context.is_active():
                return
            time.sleep(wait)  # slow this agent's stream down; it keeps what it sent
            try:
                stored = self.store.ingest(batch)
            except StoreUnavailable as e:  # disk full, I/O error, database down: retry
                log.error("store: cannot write batch %d from %s: %s", batch.seq,
                          batch.agent_id, e)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"collector cannot store: {e}")
            except BatchRejected as e:
                self.rejected += 1
                self.observe(batch, "rejected")
                log.warning("rejected batch %d from %s (%s): %s", batch.seq,
                            batch.agent_id or "?", peer, e)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch {batch.seq}: {e}")
            self.batches += 1
            if not stored:
                self.duplicates += 1
            self.observe(batch, "stored" if stored else "duplicate")
            yield pb.Ack(boot_id=batch.boot_id, seq=batch.seq, duplicate=not stored)
