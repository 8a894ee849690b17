"""A work queue that hands each item to the first free slot of a server able to run it.

Items are kept per model, and a waiting slot says which models its server has; so per-row model
routing costs nothing and a slot never takes work its server cannot do. An item handed to a waiting
slot skips the deques entirely, which keeps the hot path short when servers are hungry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkQueue(Generic[T]):
    def __init__(self, model_of: Callable[[T], str]) -> None:
        self._model_of = model_of
        self._items: dict[str, deque[T]] = {}
        self._waiters: deque[tuple[Callable[[str], bool], asyncio.Future[T | None]]] = deque()
        self._closed = False
        self._size = 0

    def __len__(self) -> int:
        return self._size

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
        items = self._items.setdefault(model, deque())
        if front:
            items.appendleft(item)
        else:
            items.append(item)
        self._size += 1

    async def get(self, accepts: Callable[[str], bool]) -> T | None:
        """The next item of a model ``accepts`` allows, or None once the queue is closed."""
        for model, items in self._items.items():
            if items and accepts(model):
                self._size -= 1
                return items.popleft()
        if self._closed:
            return None
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiters.append((accepts, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                self.put(fut.result(), front=True)  # handed to us as we were cancelled: give it back
            raise

    def take_all(self, model: str) -> list[T]:
        """Remove and return every queued item of a model (used when no server can run them)."""
        items = self._items.pop(model, None)
        if not items:
            return []
        self._size -= len(items)
        return list(items)

    def models_waiting(self) -> list[str]:
        return [model for model, items in self._items.items() if items]

    def close(self) -> None:
        """Wake every waiting slot with None: there will be no more work."""
        self._closed = True
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
