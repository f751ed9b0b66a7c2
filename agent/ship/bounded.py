"""Shipping for one-shot clients (``natlens pcap import --collector``): as an agent
ships, but with a bounded number of batches in flight, and failing in one line when
the collector does not answer or stops acknowledging, instead of retrying forever."""

from __future__ import annotations

import time
from typing import NoReturn

import grpc

from natlens.agent.ship.client import Shipper
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb


class DeliveryError(NatlensError):
    """The collector did not take every batch; the message says how many it stored."""


class BoundedShipper:
    IN_FLIGHT = 16

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None,
                 token: str | None, server_name: str | None, timeout: float) -> None:
        """Waits up to ``timeout`` for the collector to answer before anything is sent."""
        self.target, self.timeout = target, timeout
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = (grpc.secure_channel(target, credentials, options=options) if credentials
                   else grpc.insecure_channel(target))
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise DeliveryError(f"collector {target} did not answer within {timeout:.0f}s; "
                                "nothing was imported") from None
        finally:
            channel.close()
        self.shipper = Shipper(target, credentials=credentials, token=token,
                               server_name=server_name, backoff=(0.2, 2.0))
        self.shipper.start()

    def put(self, batch: pb.Batch) -> None:
        deadline = time.monotonic() + self.timeout
        while self.shipper.pending >= self.IN_FLIGHT:
            if time.monotonic() > deadline:
                self._fail("stopped acknowledging")
            time.sleep(0.005)
        self.shipper.submit(batch)

    def close(self) -> None:
        ok = self.shipper.drain(self.timeout)
        self.shipper.stop()
        if not ok:
            self._fail("did not acknowledge every batch")

    def _fail(self, what: str) -> NoReturn:
        n = self.shipper.pending
        self.shipper.stop()
        raise DeliveryError(f"collector {self.target} {what} within {self.timeout:.0f}s; "
                            f"{self.shipper.acked} batches were stored, {n} were not (import "
                            "again: stored batches are not stored twice)")
