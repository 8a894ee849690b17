"""The scheduler over servers: slots, retries, failover, resume through the store."""

from .queue import WorkQueue
from .retry import RetryPolicy
from .scheduler import Engine, EngineSettings, JobStats
from .servers import ServerState

__all__ = ["Engine", "EngineSettings", "JobStats", "RetryPolicy", "ServerState", "WorkQueue"]
