"""Exceptions that fronts turn into one clear line and an exit code.

Anything a user can fix (a bad flag, a malformed input line, a config typo, an unknown model) is a
`UsageError`: the CLI prints its message and exits 2, with no traceback. Errors that belong to a
single item (a 400 from a server, a timeout after all retries) are never raised: they become that
item's `error` value so the rest of the batch goes on.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base class for corral's own exceptions."""


class UsageError(CorralError):
    """The user asked for something impossible: exit 2 with this message."""


class ConfigError(UsageError):
    """The config file or server list is wrong. ``near`` is text the file holds at the problem (a
    key, a URL), so the loader can name the line."""

    def __init__(self, message: str, *, near: str | None = None) -> None:
        super().__init__(message)
        self.near = near


class InputError(UsageError):
    """An input file is malformed; the message names the file and line."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


class NoServerError(UsageError):
    """No live server can serve a model the job needs."""


class RunAborted(UsageError):
    """A run could not go on (a fault in corral itself on the way from an answer to the journal):
    the message says what failed; answers journaled so far are kept and a re-run resumes."""


class UnknownNameError(UsageError, TypeError):
    """A keyword argument, option or config key corral does not know (a typo, most often): the
    message names it with a did-you-mean. A TypeError too, as Python's own for a bad keyword."""
