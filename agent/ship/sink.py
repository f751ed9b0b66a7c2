"""Where sources put what they find: the batcher, with the tallies /metrics shows.

The one ``Sink`` an agent runs with. It keeps the running count of every loss by source
and reason (the agent's ``natlens_agent_lost_events_total``) and beats the health
check each time the source's loop comes round.
"""

from __future__ import annotations

from natlens.agent.health.server import Health
from natlens.agent.ship.batch import Batcher
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import Chunk, DecisionRow
from natlens.proto.names import source_name


class BatchSink:
    def __init__(self, batcher: Batcher, health: Health | None = None) -> None:
        self.batcher = batcher
        self.health = health
        self.lost_totals: dict[tuple[str, str], int] = {}

    def decisions(self, rows: list[DecisionRow]) -> None:
        self.batcher.add_decisions(rows)

    def columns(self, chunk: Chunk) -> None:
        self.batcher.add_columns(chunk)

    def counter(self, delta: pb.CounterDelta) -> None:
        self.batcher.add_counter(delta)

    def lost(self, lost: pb.LostEvents) -> None:
        key = (source_name(lost.source), lost.reason)
        self.lost_totals[key] = self.lost_totals.get(key, 0) + lost.count
        self.batcher.add_lost(lost)

    def turn(self) -> None:
        if self.health is not None:
            self.health.beat()
        self.batcher.tick()
