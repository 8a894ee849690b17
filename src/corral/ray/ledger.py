"""A small named Ray actor that hands each worker actor its index (for its share of the slots).

Actors in ``map_batches`` are not told their number. Each one asks the ledger on start-up, with its
own actor id: the ledger answers the lowest index nobody holds. Ray restarts a killed actor under the
same id, so a restarted actor gets its own index back; an actor replaced by a new one (another id)
gets the index of a holder that Ray reports dead. The ledger is detached (it must outlive any one
worker, which would otherwise own it) and ends itself once every holder is dead, so nothing is left
behind on a long-lived cluster.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import ray

NAMESPACE = "corral"
WATCH_SECONDS = 5.0


def actor_state(actor_id: str) -> str | None:
    """ALIVE, RESTARTING, DEAD, ... as the cluster's control store says; None when unknown."""
    try:
        from ray._private import state  # the GCS table; ray.util.state needs the dashboard

        info = state.actors(actor_id)
        return info.get("State") if isinstance(info, dict) else None
    except Exception:  # an older or newer Ray: treat the holder as alive (never oversubscribe)
        return None


@ray.remote(num_cpus=0, max_restarts=0)
class SlotLedger:
    def __init__(self, num_actors: int) -> None:
        self.num_actors = num_actors
        self.holders: dict[str, int] = {}
        self._lock = threading.Lock()
        self._watch = threading.Thread(target=self._watch_holders, daemon=True)
        self._watch.start()

    def claim(self, actor_id: str) -> int | None:
        """This actor's index, or None when all are held by live actors (ask again later)."""
        with self._lock:
            if actor_id in self.holders:
                return self.holders[actor_id]
            taken = set(self.holders.values())
            free = [i for i in range(self.num_actors) if i not in taken]
            if not free:
                for holder, index in list(self.holders.items()):
                    if actor_state(holder) == "DEAD":
                        del self.holders[holder]
                        free.append(index)
            if not free:
                return None
            self.holders[actor_id] = min(free)
            return self.holders[actor_id]

    def holding(self) -> dict[str, int]:
        with self._lock:
            return dict(self.holders)

    def _watch_holders(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                holders = list(self.holders)
            if holders and all(actor_state(h) == "DEAD" for h in holders):
                ray.kill(ray.get_runtime_context().current_actor)  # an intended exit, not a crash
                return


def ledger_name(key: str) -> str:
    job = ray.get_runtime_context().get_job_id()
    return f"corral-slots-{job}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def claim_index(key: str, num_actors: int, wait: float = 600.0) -> int:
    """This actor's index among ``num_actors``, from the job's ledger (created by the first asker)."""
    if num_actors == 1:
        return 0
    me = ray.get_runtime_context().get_actor_id() or f"driver-{id(object())}"
    deadline = time.monotonic() + wait
    while True:
        # .options() is added by @ray.remote, which the type checker cannot see
        remote: Any = SlotLedger
        ledger: Any = remote.options(name=ledger_name(key), namespace=NAMESPACE, lifetime="detached",
                                     get_if_exists=True).remote(num_actors)
        try:
            index = ray.get(ledger.claim.remote(me))
        except ray.exceptions.RayActorError:  # an earlier run's ledger, ending itself just now
            index = None
        if index is not None:
            return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"corral: no free slot share among {num_actors} actors after {wait:.0f}s; "
                               "is num_actors smaller than the actor pool's size?")
        time.sleep(1.0)


def drop_ledger(key: str) -> None:
    """End the ledger of a finished job (the CLI does; it also ends itself when its holders die)."""
    try:
        ray.kill(ray.get_actor(ledger_name(key), namespace=NAMESPACE))
    except ValueError:
        pass
