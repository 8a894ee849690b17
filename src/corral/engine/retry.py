"""When to try again, and how long to wait: exponential backoff with full jitter.

Full jitter (a random wait between 0 and the exponential cap) spreads retries of many items that
failed together, so a server coming back is not hit by all of them at once. A ``Retry-After`` from
the server is honoured as a floor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class RetryPolicy:
    max_attempts: int = 5          # attempts for failures (dropped connections, 5xx)
    # Attempts that end in a timeout: each one already waited the whole timeout, so a row gets
    # one more try (another server, a model now loaded) and then fails, in bounded time.
    timeout_attempts: int = 2
    busy_attempts: int = 30        # attempts for "server busy" answers (429/503), which are not the item's fault
    base: float = 0.5              # seconds
    cap: float = 30.0              # seconds
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number ``attempt + 1``."""
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        wait = self.rng.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap * 4))
        return wait


BUSY_STATUSES = frozenset({429, 503})
