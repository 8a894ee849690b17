"""How a fleet's slots are shared among Ray actors, so that the total is respected, not multiplied.

Every server's slots are laid end to end (server 0's slots, then server 1's, ...) and dealt round
robin: slot ``j`` goes to actor ``j % num_actors``. Each actor thus gets ``total // num_actors`` or one
more slots in all; a server with fewer slots than there are actors is served by only some of them,
and the servers of a fleet with more servers than actors are spread over the actors. A fleet with
fewer slots than actors cannot give every actor one: that is a usage error.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import ServerSpec
from ..engine.servers import DEFAULT_SLOTS
from ..errors import UsageError


def fleet_slots(specs: list[ServerSpec], workers: int | None = None) -> list[ServerSpec]:
    """Every server with a known number of slots: its config's ``max_concurrency``, else ``workers``,
    else the protocol's default (8 for Ollama, 16 for OpenAI-compatible servers)."""
    return [s if s.max_concurrency else replace(s, max_concurrency=workers or DEFAULT_SLOTS.get(s.api, 8))
            for s in specs]


def share_slots(specs: list[ServerSpec], num_actors: int, index: int) -> list[ServerSpec]:
    """The servers actor ``index`` (of ``num_actors``) talks to, each with its share of slots."""
    if num_actors < 1:
        raise UsageError(f"num_actors must be at least 1, not {num_actors}")
    if not 0 <= index < num_actors:
        raise UsageError(f"actor index {index} is outside 0..{num_actors - 1}")
    total = sum(s.max_concurrency or 0 for s in specs)
    if total < num_actors:
        raise UsageError(f"the fleet has {total} slot(s) in all, fewer than the {num_actors} actors: "
                         f"use an actor pool of at most {total}, or more slots")
    mine: list[ServerSpec] = []
    start = 0
    for spec in specs:
        slots = spec.max_concurrency or 0
        # slots j in [start, start + slots) with j % num_actors == index
        first = start + (index - start) % num_actors
        count = 0 if first >= start + slots else (start + slots - 1 - first) // num_actors + 1
        if count:  # nothing queued ahead: each actor's share is its part of the total, no more
            mine.append(replace(spec, max_concurrency=count, queue_ahead=0))
        start += slots
    return mine
