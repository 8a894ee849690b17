"""The engine over servers: the fleet (probing, benching), runs on it (slots, retries, hedging,
ordered delivery), resume through the store."""

from .engine import Engine
from .fleet import Fleet
from .queue import WorkQueue
from .retry import RetryPolicy
from .run import Run, Validator
from .servers import ServerState
from .settings import EngineSettings, JobStats

__all__ = ["Engine", "EngineSettings", "Fleet", "JobStats", "RetryPolicy", "Run", "ServerState",
           "Validator", "WorkQueue"]
