"""Live server state: what each server can run, how many slots it has, and whether it is benched.

A server that keeps failing is benched: its slots stop taking work, a re-probe runs after a
cool-down that doubles each time (capped), and the server rejoins when it answers again. So is a
server that answers "busy" (503/429) to everything: a proxy with no backend answers exactly like
that, instantly, and would otherwise take most of the job's requests and fail them. Its cool-down
grows until it answers a request (a probe is not enough: such a proxy answers probes), so it costs
a few requests per re-probe, not most of the job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..backends import Backend, BackendError, ServerInfo, ollama_model_name
from ..config import ServerSpec
from ..limits import MAX_SLOTS_PER_SERVER
from .rates import RateLimiter
from .retry import BUSY_STATUSES

# Requests kept in flight per server when neither the config nor the server says. Twice the server's
# parallel slots keeps its queue from running dry between one answer and the next request (measured on
# llama.cpp: 2 x n_parallel gave the best throughput); Ollama runs 4 in parallel by default.
DEFAULT_SLOTS = {"ollama": 8, "openai": 16}
SLOTS_PER_SERVER_SLOT = 2
# Requests sent to a server beyond its slots, to wait in its own queue: the next one is there when a
# slot frees, instead of a round trip later (on 50 ms answers that gap cost 8-11% of the makespan).
# Every server corral speaks to queues (Ollama, llama.cpp, vLLM); a server's ``queue_ahead`` says
# otherwise.
QUEUE_AHEAD = 1
FAILURES_BEFORE_BENCH = 3
# "Busy" answers in a row, none answered between them, that bench a server. A loaded server that
# refuses a burst answers the requests it holds soon after (which ends the run of busy answers).
BUSY_BEFORE_BENCH = 8
FIRST_COOLDOWN = 2.0  # seconds before the first re-probe of a benched (or absent) server
MAX_COOLDOWN = 60.0   # seconds: the doubling back-off between re-probes stops here


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    eval_ns: int = 0
    busy_seconds: float = 0.0
    benched: int = 0
    hedges: int = 0       # copies of rows a slower server held, sent here in the tail
    cancelled: int = 0    # copies sent here and cancelled because the other copy answered first


@dataclass(eq=False)
class ServerState:
    """One server during a run. Its slots are learnt per model (``control_for``): on Ollama every
    loaded model runs its own parallel requests, and a model that answers "busy" should not cost
    the others theirs. ``ceiling`` (the slot tasks the engine runs for it) caps the sum."""

    spec: ServerSpec
    backend: Backend
    info: ServerInfo
    slots: int                     # where each model's learnt limit starts (config, probe or default)
    ceiling: int = 0               # the most in flight at once, all models together; 0: ``slots``
    available: asyncio.Event = field(default_factory=asyncio.Event)
    consecutive_failures: int = 0
    consecutive_busy: int = 0
    busy_since: float | None = None   # monotonic time of the first busy answer since the last answer
    removed: bool = False             # taken out of the config (SIGHUP): takes no more rows, ever
    cooldown: float = FIRST_COOLDOWN
    in_flight: int = 0
    stats: ServerStats = field(default_factory=ServerStats)
    last_error: str | None = None
    controls: dict[str, SlotControl] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)  # per model: held by a slot, sent or about to be
    # Its rpm / tpm budgets, or (made on first need) just what its headers say is left; None: neither.
    rates: RateLimiter | None = None
    ahead: int = 0                 # requests kept waiting in its queue beyond its slots

    def __post_init__(self) -> None:
        self.available.set()
        self.ceiling = max(self.ceiling, self.slots)
        if self.rates is None and (self.spec.rpm or self.spec.tpm):
            self.rates = RateLimiter(self.spec.rpm, self.spec.tpm)

    def rate_limiter(self) -> RateLimiter:
        """Its limiter, made when a server with no configured budget first reports its limits."""
        if self.rates is None:
            self.rates = RateLimiter()
        return self.rates

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def benched(self) -> bool:
        return not self.available.is_set()

    @property
    def limit(self) -> int:
        """Slots in use now, as learnt: the models' limits together, within the ceiling."""
        if not self.controls:
            return self.slots
        return min(self.ceiling, sum(c.limit for c in self.controls.values()))

    @property
    def max_tasks(self) -> int:
        """Slot tasks the engine may run for it: its ceiling and the requests queued ahead."""
        return self.ceiling + self.ahead

    @property
    def queued_ahead(self) -> int:
        """Requests in flight beyond its slots: waiting in its queue for the next free slot."""
        return max(0, self.in_flight - self.limit)

    def busy_text(self) -> str:
        """``3/4 busy``, or ``4/4 busy +1 queued`` when requests wait in its queue."""
        ahead = self.queued_ahead
        return f"{self.in_flight - ahead}/{self.limit} busy" + (f" +{ahead} queued" if ahead else "")

    def control_for(self, model: str) -> SlotControl:
        control = self.controls.get(model)
        if control is None:
            control = self.controls[model] = SlotControl(limit=self.slots, ceiling=self.ceiling,
                                                         keep=self.spec.max_concurrency or 1)
        return control

    def has_room(self, model: str, *, ahead: bool = True) -> bool:
        """Room for one more request of ``model``: in a slot, or (``ahead``) in its queue. Requests
        are queued ahead once its slots are known: fixed, or learnt up to where more did not pay (a
        request waiting in its queue while slots are still being tried would blur what they gain)."""
        control = self.controls.get(model)
        if control is None:
            limit, known = self.slots, self.ceiling <= self.slots
        else:
            limit, known = control.limit, control.at_knee or control.limit >= control.ceiling
        return self.taken.get(model, 0) < limit + (self.ahead if ahead and known else 0)

    def take(self, model: str) -> None:
        self.taken[model] = self.taken.get(model, 0) + 1

    def release(self, model: str) -> None:
        self.taken[model] -= 1

    def serves(self, model: str) -> bool:
        return resolve_model(self, model) is not None

    def on_success(self) -> None:
        self.consecutive_failures = 0
        self.consecutive_busy = 0
        self.busy_since = None
        self.cooldown = FIRST_COOLDOWN

    def on_failure(self, error: BackendError) -> bool:
        """Count a failure that says something about the server; True if it should now be benched."""
        self.last_error = str(error)
        if error.kind == "timeout":
            self.ahead = 0  # a request queued behind one that never ends would time out as well
        if error.status in BUSY_STATUSES:
            if self.busy_since is None:
                self.busy_since = time.monotonic()
            self.consecutive_busy += 1
            return self.consecutive_busy >= BUSY_BEFORE_BENCH and not self.benched
        says_server_is_sick = error.kind != "too_long" and (error.status or 0) in (500, 502, 504)
        if error.kind in ("connection", "timeout") or says_server_is_sick:
            self.consecutive_failures += 1
        return self.consecutive_failures >= FAILURES_BEFORE_BENCH and not self.benched

    def bench(self) -> None:
        self.available.clear()
        self.stats.benched += 1

    @property
    def bench_reason(self) -> str:
        if self.consecutive_busy >= BUSY_BEFORE_BENCH:
            return f"{self.consecutive_busy} busy answers in a row and no answer"
        return f"{self.consecutive_failures} failures in a row"

    def unbench(self) -> None:
        """Back in service after a probe answered. The next cool-down is twice this one until a
        request is answered (`on_success`): a server that answers probes but refuses every request
        waits longer each time it is benched again."""
        self.consecutive_failures = 0
        self.cooldown = min(self.cooldown * 2, MAX_COOLDOWN)
        self.available.set()


def resolve_model(server: ServerState, model: str) -> str | None:
    """The server's own name for ``model``, or None when it does not have it."""
    names = server.spec.models if server.spec.models is not None else tuple(server.info.models)
    if model in names:
        return model
    if server.spec.api == "ollama":
        full = ollama_model_name(model)
        for name in names:
            if ollama_model_name(name) == full:
                return name
    return None


def default_slots(spec: ServerSpec, info: ServerInfo) -> int:
    """Configured slots win; else twice what llama.cpp reports (at most MAX_SLOTS_PER_SERVER, whatever
    a server claims); else a per-protocol default."""
    if spec.max_concurrency:
        return spec.max_concurrency
    if info.slots:
        return min(MAX_SLOTS_PER_SERVER, SLOTS_PER_SERVER_SLOT * info.slots)
    return DEFAULT_SLOTS.get(spec.api, 8)


async def probe_one(backend: Backend, timeout: float) -> ServerInfo | BackendError:
    """The probe's answer, or why the server cannot be used. Any fault reading a malformed answer is
    that server's problem (it is skipped with the reason), never the run's."""
    try:
        return await backend.probe(timeout)
    except BackendError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a server's answer must not crash the fleet
        return BackendError(f"malformed answer to the probe ({type(exc).__name__}: {exc})", kind="protocol")


def describe_probe_error(spec: ServerSpec, error: BackendError) -> str:
    if error.kind == "connection":
        return f"{spec.label}: unreachable ({error})"
    if error.kind == "timeout":
        return f"{spec.label}: no answer to the probe ({error})"
    if error.status in (401, 403):
        hint = f" (is ${spec.api_key_env} set?)" if spec.api_key_env else (
            " (set api_key_env in the config, --api-key-env NAME, or OPENAI_API_KEY)")
        return f"{spec.label}: authentication refused, HTTP {error.status}{hint}"
    if error.status == 404:
        other = "openai" if spec.api == "ollama" else "ollama"
        return f"{spec.label}: answered 404 to the probe; is it an {other} server? ({error})"
    return f"{spec.label}: probe failed ({error})"


@dataclass(eq=False)
class SlotControl:
    """How many requests of one model to keep in flight on one server, learnt during the run (AIMD-like).

    It starts from the configured (or probed) slots. Every ``period`` answers it measures the
    work done per second (in cost units, costs.Speeds.cost, so that a stretch of short answers late
    in a longest-first job is not mistaken for a gain); while work is waiting it tries more slots,
    keeps them if throughput rose by ``gain`` and gives them back otherwise (then waits a few periods
    before trying again). The step starts at one slot and doubles after each try that paid in full,
    as in TCP's slow start, so a server configured with half its real slots gets them in a few
    periods. A try that paid only in part keeps the part that paid: the gain measured, against the
    gain the added slots would bring if throughput grew with slots, says how many of them were real.
    A 503/429 "busy" halves it at once; refusals of requests sent before the last cut are ignored
    (they say nothing about the new limit), so one burst is one cut, as in TCP's congestion control.
    Rising latency without more work per second shows up as no gain, so the extra slot is given back.
    Slots that do not pay are given back too: after a try that did not pay, it tries one slot fewer
    (a period later) and keeps it while work per second holds (within ``gain``), one at a time,
    until one fewer costs work; so a 2-slot server started at the default 8 settles near 2 instead
    of keeping 8 requests in flight that only wait in its queue.
    """

    limit: int
    ceiling: int
    floor: int = 1
    keep: int = 1                  # slots never given back for want of gain (the configured ones)
    gain: float = 1.05
    hold: float = 0.97             # one slot fewer is kept while work per second stays above this share
    rest_periods: int = 4
    _count: int = 0
    _units: float = 0.0
    _since: float | None = None
    _rate: float | None = None
    _trying: int = 0               # slots added by the try being measured (0: none)
    _step: int = 1
    _resting: int = 0
    _cut_at: float = float("-inf")
    _lowering: int = 0             # slots removed by the try-down being measured (0: none)
    _probe_down: bool = False      # a try did not pay: try fewer next
    _reference: float | None = None  # work per second before the first slot was given back
    raises: int = 0
    cuts: int = 0
    lowers: int = 0                # slots given back because fewer did as much work
    at_knee: bool = False          # a try of more slots did not pay (in full): more would only queue

    @property
    def period(self) -> int:
        return max(4, 2 * self.limit)

    def _set(self, limit: int) -> None:
        self.limit = max(self.floor, min(self.ceiling, limit))

    def on_answer(self, now: float, work_waiting: bool, units: float = 1.0) -> bool:
        """Count one answer worth ``units`` of work; True when the limit was just raised."""
        if self._since is None:
            self._since = now
        self._count += 1
        self._units += units
        if self._count < self.period:
            return False
        elapsed = max(now - self._since, 1e-6)
        rate = self._units / elapsed
        self._count, self._units, self._since = 0, 0.0, now
        previous, self._rate = self._rate, rate
        if self._trying:
            tried, self._trying = self._trying, 0
            if previous is not None and rate < previous * self.gain:
                self._set(self.limit - tried)  # no better with more: give them back, rest a while
                self._step, self._resting = 1, self.rest_periods
                self._probe_down = True        # ... then see whether fewer do as well
                self.at_knee = True
                return False
            if previous is not None:
                linear = tried / (self.limit - tried)  # the gain if every added slot were real
                paid = max(1, round(tried * min(1.0, (rate / previous - 1) / linear)))
                if paid < tried:  # part of it was real: keep that part, then go one at a time
                    self.at_knee = True
                    self._set(self.limit - tried + paid)
                    self._step, self._resting = 1, self.rest_periods
                    return False
            self._step *= 2
        elif self._lowering:
            removed, self._lowering = self._lowering, 0
            reference = self._reference if self._reference is not None else previous
            if reference is None or not work_waiting or rate < reference * self.hold:
                self._set(self.limit + removed)  # the slot was real (or the test was unclear)
                self._resting, self._reference = 2 * self.rest_periods, None
                return False
            self.lowers += 1
            self._reference = max(reference, rate)
            self._probe_down = True  # as much work with one fewer: keep it and try another
        elif self._resting:
            self._resting -= 1
            return False
        if work_waiting and self._probe_down and self.limit > max(self.floor, self.keep):
            self._probe_down = False
            if self._reference is None:
                self._reference = rate
            self._lowering = 1
            self._set(self.limit - 1)
            return False
        if work_waiting and self.limit < self.ceiling:  # it paid (or first try): more
            self._reference = None
            self._trying = min(self._step, self.ceiling - self.limit)
            self.raises += 1
            self._set(self.limit + self._trying)
            return True
        return False

    def on_busy(self, started: float, now: float) -> None:
        """A 503/429 to a request sent at ``started`` (the same clock as ``now``)."""
        if started < self._cut_at:
            return
        self._cut_at = now
        self.cuts += 1
        self._trying, self._step, self._resting, self._rate = 0, 1, self.rest_periods, None
        self._lowering, self._probe_down, self._reference = 0, False, None
        self._count, self._units, self._since = 0, 0.0, None
        self._set(self.limit // 2)
