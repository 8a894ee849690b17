"""Fair sharing of one fleet by several batches: stride scheduling over the batches with rows left.

Each batch has a weight (its ``metadata`` priority, 1 by default) and a pass value; the next row
comes from the batch with the lowest pass, whose pass then grows by 1/weight. So two batches of
weight 1 alternate row by row whatever their sizes (a 1M-line batch never starves a 100-line one),
and weight 3 gets three rows for one. A batch that joins starts at the current pass, so it neither
waits for the others' history nor gets a burst for having been away.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class FairShare(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._weights: dict[T, float] = {}
        self._order = itertools.count()
        self._now = 0.0
        self._work = asyncio.Event()

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, member: object) -> bool:
        return member in self._weights

    def add(self, member: T, weight: float = 1.0) -> None:
        if member in self._weights:
            return
        self._weights[member] = weight
        heapq.heappush(self._heap, (self._now, next(self._order), member))
        self._work.set()

    def remove(self, member: T) -> None:
        """Drop ``member``; its heap entry is skipped lazily when it comes up."""
        self._weights.pop(member, None)

    def pick(self) -> T | None:
        """The member whose turn it is (its pass advances), or None when there is none."""
        while self._heap:
            pass_value, order, member = self._heap[0]
            weight = self._weights.get(member)
            if weight is None:
                heapq.heappop(self._heap)
                continue
            self._now = pass_value
            heapq.heapreplace(self._heap, (pass_value + 1.0 / weight, order, member))
            return member
        return None

    async def wait(self) -> None:
        """Until a member is added (returns at once if one was added since the last wait)."""
        if not self._weights:
            self._work.clear()
            await self._work.wait()
