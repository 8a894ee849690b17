"""The end of a run: which server should take the last rows.

In a run's tail the makespan is the time the *last* answer arrives. A slow server that takes one
of the last rows ends the run late: on short requests, a 100 ms slot that takes a row the other
servers would have finished in 40 ms adds 60 ms to the whole job (and a row queued ahead behind
its busy slots, twice that). So once the input is all read, a slot leaves a row in the queue when
the rest of the fleet would finish it sooner: the queue drains at their combined rate (slots per
second of latency, as learnt), and the row then takes one of their latencies.
"""

from __future__ import annotations

from collections.abc import Iterable

from .costs import Speeds
from .servers import ServerState


def better_elsewhere(server: ServerState, others: Iterable[ServerState], speeds: Speeds, model: str,
                     cost: float, queued: int) -> bool:
    """True when the other live servers of ``model`` would answer a row ``queued``-th in the queue
    sooner than ``server`` (which, with no slot free, holds it in its own queue first)."""
    mine = speeds.expected_seconds(id(server), model, cost)
    if mine is None:
        return False
    if not server.has_room(model, ahead=False):
        mine *= 2  # it waits for one of the server's slots, then runs
    rate = 0.0
    fastest = float("inf")
    for other in others:
        if other is server or other.benched or not other.serves(model):
            continue
        seconds = speeds.expected_seconds(id(other), model, cost)
        if seconds is None or seconds <= 0:
            continue
        rate += other.limit / seconds
        fastest = min(fastest, seconds)
    if rate <= 0:
        return False
    return mine > queued / rate + fastest
