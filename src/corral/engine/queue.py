"""A work queue that hands each item to the first free slot of a server able to run it.

Items are kept per model, and a waiting slot says which models its server has; so per-row model
routing costs nothing and a slot never takes work its server cannot do. An item handed to a waiting
slot skips the queue entirely, which keeps the hot path short when servers are hungry.

Queued items leave longest first (``cost_of``): on a mixed fleet, a long item that starts last on a
slow server is what makes a job end late, while short ones fill the gaps at the end. Retries go in
front of everything, so an old item is not starved by new ones.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Idle(enum.Enum):
    """What a waiting slot gets when it should look for other work (a straggler to hedge). An enum
    of one member, so ``got is IDLE`` tells a type checker the rest is an item or None."""

    IDLE = "IDLE"

    def __repr__(self) -> str:
        return "IDLE"


IDLE = _Idle.IDLE


class _ModelQueue(Generic[T]):
    __slots__ = ("front", "heap")

    def __init__(self) -> None:
        self.front: deque[T] = deque()
        self.heap: list[tuple[float, int, T]] = []

    def __len__(self) -> int:
        return len(self.front) + len(self.heap)

    def head_cost(self) -> float:
        """Sort key of the next item: retries first (infinite), then the costliest."""
        if self.front:
            return float("inf")
        return -self.heap[0][0] if self.heap else float("-inf")

    def pop(self) -> T:
        return self.front.popleft() if self.front else heapq.heappop(self.heap)[2]


class WorkQueue(Generic[T]):
    def __init__(self, model_of: Callable[[T], str],
                 cost_of: Callable[[T], float] | None = None) -> None:
        self._model_of = model_of
        self._cost_of = cost_of
        self._items: dict[str, _ModelQueue[T]] = {}
        self._waiters: deque[tuple[Callable[[str], bool], asyncio.Future[T | _Idle | None]]] = deque()
        self._closed = False
        self._size = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._size

    @property
    def waiting_slots(self) -> int:
        return sum(1 for _, fut in self._waiters if not fut.done())

    def put(self, item: T, *, front: bool = False) -> None:
        """Queue an item; ``front`` for retries, so an old item is not starved by new ones."""
        model = self._model_of(item)
        for _ in range(len(self._waiters)):
            accepts, fut = self._waiters.popleft()
            if fut.done():
                continue
            if accepts(model):
                fut.set_result(item)
                return
            self._waiters.append((accepts, fut))
        queue = self._items.get(model)
        if queue is None:
            queue = self._items[model] = _ModelQueue()
        if front:
            queue.front.appendleft(item)
        else:
            cost = self._cost_of(item) if self._cost_of is not None else 0.0
            heapq.heappush(queue.heap, (-cost, next(self._seq), item))
        self._size += 1

    def get_nowait(self, accepts: Callable[[str], bool]) -> T | None:
        """The costliest queued item of a model ``accepts`` allows, or None when there is none."""
        best: _ModelQueue[T] | None = None
        for model, queue in self._items.items():
            if queue and accepts(model) and (best is None or queue.head_cost() > best.head_cost()):
                best = queue
        if best is None:
            return None
        self._size -= 1
        return best.pop()

    async def get(self, accepts: Callable[[str], bool]) -> T | _Idle | None:
        """The next item of a model ``accepts`` allows; None once the queue is closed; IDLE when
        ``wake_idle`` asks waiting slots to look for other work."""
        item = self.get_nowait(accepts)
        if item is not None:
            return item
        if self._closed:
            return None
        fut: asyncio.Future[T | _Idle | None] = asyncio.get_running_loop().create_future()
        self._waiters.append((accepts, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() not in (None, IDLE):
                self.put(fut.result(), front=True)  # type: ignore[arg-type]  # handed to us as we were cancelled
            raise

    def wake_idle(self) -> None:
        """Wake every waiting slot with IDLE (the queue is empty; a straggler may be worth a hedge)."""
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(IDLE)

    def take_all(self, model: str) -> list[T]:
        """Remove and return every queued item of a model (used when no server can run them)."""
        queue = self._items.pop(model, None)
        if not queue:
            return []
        items = list(queue.front) + [entry[2] for entry in sorted(queue.heap)]
        self._size -= len(items)
        return items

    def take_retries_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the queued retries (items put in front) that ``predicate`` picks."""
        taken: list[T] = []
        for queue in self._items.values():
            if queue.front and any(predicate(item) for item in queue.front):
                kept = deque(item for item in queue.front if not predicate(item))
                taken += [item for item in queue.front if predicate(item)]
                queue.front = kept
        self._size -= len(taken)
        return taken

    def models_waiting(self) -> list[str]:
        return [model for model, queue in self._items.items() if queue]

    def close(self) -> None:
        """Wake every waiting slot with None: there will be no more work."""
        self._closed = True
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
