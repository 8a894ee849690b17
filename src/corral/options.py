"""The model options corral knows, and the one check every front's names pass through.

A misspelt option used to travel silently: ``temprature=0`` went to the server, which ignored it,
and into the manifest, so a researcher believed temperature 0 was used. Now every name a user gives
(a keyword argument of a Python front, an option in ``options=``, ``-O`` or the config file) is
either a parameter of that front, an option below, or an error with a did-you-mean. An option a
server accepts but corral does not know is still sent when asked for on purpose:
``extra_options={"dry_multiplier": 0.8}`` (Python), ``extra_options = {...}`` (config),
``--extra-option NAME=VALUE`` (CLI).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import UnknownNameError

#: Ollama's documented model options (the API's ``options`` and the Modelfile's PARAMETERs).
OLLAMA_OPTIONS = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "tfs_z",
    "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "penalize_newline", "mirostat", "mirostat_eta", "mirostat_tau", "stop", "numa", "num_ctx",
    "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "vocab_only", "use_mmap", "use_mlock",
    "num_thread", "num_gqa", "logits_all", "embedding_only", "rope_frequency_base",
    "rope_frequency_scale",
})
#: OpenAI's spellings corral maps to Ollama's (`corral.requests.OPTION_ALIASES`) or sends as they are
#: to OpenAI-compatible servers (`corral.backends.openai`).
OPENAI_OPTIONS = frozenset({
    "max_tokens", "max_completion_tokens", "logit_bias", "logprobs", "top_logprobs",
})
KNOWN_OPTIONS = OLLAMA_OPTIONS | OPENAI_OPTIONS

F = TypeVar("F", bound=Callable[..., Any])


def suggestion(name: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'temperature'?`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


#: How to send an option corral does not know, in each front.
EXTRA_OPTIONS_HINT = ("to send an option corral does not know: extra_options={...} in Python, "
                      "extra_options = { ... } in the config, --extra-option NAME=VALUE on the command line")


def check_options(options: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """``options`` when every name is a known model option; else an `UnknownNameError` (after
    ``where``, e.g. ``"a prompt's options"``) with a did-you-mean."""
    given = dict(options or {})
    for name in given:
        if name not in KNOWN_OPTIONS:
            raise UnknownNameError(
                f"{where + ': ' if where else ''}unknown model option {name!r}"
                f"{suggestion(name, KNOWN_OPTIONS)} ({EXTRA_OPTIONS_HINT})")
    return given


def check_keywords(front: str, given: Iterable[str], parameters: Iterable[str], *,
                   options_allowed: bool) -> None:
    """Refuse a keyword that is neither one of ``front``'s ``parameters`` nor (when the front takes
    model options as keywords) a known model option, suggesting the closest of either."""
    params = set(parameters)
    allowed = params | (KNOWN_OPTIONS if options_allowed else set())
    for name in given:
        if name in allowed:
            continue
        hint = suggestion(name, allowed)
        tail = (" (model options go by Ollama's names: temperature, seed, num_ctx, num_predict...; "
                "pass extra_options={...} to send one corral does not know)") if options_allowed else ""
        raise UnknownNameError(f"{front}() got an unknown keyword argument {name!r}{hint}{tail}")


def checked_keywords(*passes_to: Callable[..., Any]) -> Callable[[F], F]:
    """Check a front's keyword arguments before it runs: every name is a parameter of the front (or
    of the function its ``**kwargs`` go to, ``passes_to``), or a known model option when that
    function takes ``**options``. Python's own TypeError has no did-you-mean, and ``**options``
    would take any typo as an option."""

    def decorate(func: F) -> F:
        named: list[str] = []
        options_allowed = False
        targets: list[Callable[..., Any]] = [func, *passes_to]
        for target in targets:
            signature = inspect.signature(target)
            named += [name for name, p in signature.parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            if target is not func or not passes_to:
                options_allowed = options_allowed or takes_any
        front = func.__name__.removesuffix("_async")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_keywords(front, kwargs, named, options_allowed=options_allowed)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
