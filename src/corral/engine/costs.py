"""What an item will cost, how fast each server has been, and what that says about timeouts and hedges.

A batch of prompts of mixed lengths ends when its longest item ends. Three decisions need a guess
at "how long will this take here": the order of the queue (longest first, so a long item never
starts last), the per-request timeout (a 20-token answer needs no 300 s allowance, a 4,000-token one
may need more), and whether an idle fast server should re-run an item a slow one still holds.

The unit is a *cost unit*: roughly one generated token. Prompt tokens count for a fraction of one
(prefill runs many tokens per forward pass). Each server and model learns seconds per cost unit
from its own answers (an exponential moving average), which folds in the hardware, the model and
how many requests the server runs at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHARS_PER_TOKEN = 4           # a rough English average; only ratios between items matter here
PREFILL_WEIGHT = 0.05         # a prompt token costs ~1/20 of a generated one (batched prefill)
DEFAULT_OUTPUT_TOKENS = 256   # expected answer length of a model with no num_predict and no history
SPEED_ALPHA = 0.2             # weight of the newest observation in the moving averages


def prompt_tokens(request: Any) -> int:
    """Tokens of everything sent (messages or inputs), estimated from characters: no tokenizer."""
    inputs = getattr(request, "inputs", None)
    if inputs is not None:
        return sum(len(text) for text in inputs) // CHARS_PER_TOKEN + 1
    chars = 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return chars // CHARS_PER_TOKEN + 1


def _num_predict(options: dict[str, Any]) -> int | None:
    value = options.get("num_predict")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None  # -1 / -2 (Ollama's "unlimited") says nothing about length
    return int(value)


@dataclass(slots=True)
class Speeds:
    """Moving averages learnt during a run: output tokens per model, seconds per cost unit per server."""

    output_tokens: dict[str, float] = field(default_factory=dict)
    seconds_per_unit: dict[tuple[int, str], float] = field(default_factory=dict)
    longest_output: dict[str, float] = field(default_factory=dict)  # per model, answers of no stated length

    def expected_output(self, request: Any) -> float:
        """The user's num_predict when given (their statement of the length), else the model's mean."""
        limit = _num_predict(request.options)
        if limit is not None:
            return float(limit)
        return self.output_tokens.get(request.model, DEFAULT_OUTPUT_TOKENS)

    def cost(self, request: Any) -> float:
        """Cost units of one request: expected output tokens plus a fraction of its prompt tokens."""
        if request.endpoint == "embed" or getattr(request, "inputs", None) is not None:
            return prompt_tokens(request) * PREFILL_WEIGHT + 1.0
        return prompt_tokens(request) * PREFILL_WEIGHT + self.expected_output(request)

    def timeout_cost(self, request: Any) -> float:
        """The cost a timeout should allow for: with no stated length, the longest answer the
        model has given so far rather than its mean. Free answers vary tenfold (the embedded model's
        README prompts: 22 to 491 tokens), and a timeout from the mean cut the long ones, twice."""
        cost = self.cost(request)
        if _num_predict(request.options) is None:
            cost += max(0.0, self.longest_output.get(request.model, 0.0) - self.expected_output(request))
        return cost

    def observe(self, server_id: int, request: Any, cost: float, seconds: float,
                output_tokens: int | None) -> None:
        """Learn from one answered attempt (its cost as estimated when it was sent)."""
        if output_tokens is not None and _num_predict(request.options) is None:
            old = self.output_tokens.get(request.model)
            self.output_tokens[request.model] = (
                float(output_tokens) if old is None else old + SPEED_ALPHA * (output_tokens - old))
            self.longest_output[request.model] = max(self.longest_output.get(request.model, 0.0),
                                                     float(output_tokens))
        key = (server_id, request.model)
        sample = seconds / max(cost, 1.0)
        old = self.seconds_per_unit.get(key)
        self.seconds_per_unit[key] = sample if old is None else old + SPEED_ALPHA * (sample - old)

    def expected_seconds(self, server_id: int, model: str, cost: float) -> float | None:
        """Seconds one attempt should take on this server, or None before its first answer."""
        spu = self.seconds_per_unit.get((server_id, model))
        return None if spu is None else spu * max(cost, 1.0)


@dataclass(slots=True)
class TimeoutPolicy:
    """A per-request timeout from the expected duration, clamped; a fixed value overrides it all."""

    fixed: float | None = None     # --timeout / a server's timeout: one number for every request
    factor: float = 4.0            # allowance over the expected duration (queueing, slow moments)
    floor: float = 30.0            # never less: a cold model load alone can take this long
    ceiling: float = 900.0         # never more: a hung request must end some time
    default: float = 120.0         # before the server has answered anything (a cold model load)

    def seconds(self, expected: float | None) -> float:
        if self.fixed is not None:
            return self.fixed
        if expected is None:
            return self.default
        return min(self.ceiling, max(self.floor, self.factor * expected))


def hedge_gain(now: float, started: float, theirs: float | None, mine: float,
               margin: float, min_gain: float = 0.0) -> float | None:
    """How much sooner an idle server would finish an item another one holds, or None if not worth it.

    ``theirs`` is the holder's expected duration (None if it has never answered: then the item is
    only worth re-running once it has taken longer than our whole expected duration). ``margin``
    asks for a clear win, so estimates' noise does not double the tail's work for nothing, and
    ``min_gain`` (seconds) keeps short items from being sent twice for a gain nobody would notice."""
    elapsed = now - started
    if theirs is None:
        remaining = elapsed  # no history: as long again as it has run so far
    else:
        remaining = started + theirs - now
        if remaining < elapsed * 0.5:  # overdue: the estimate was wrong, or the server stalled
            remaining = elapsed * 0.5
    gain = remaining - mine
    if remaining > mine * margin and gain >= min_gain:
        return gain
    return None

