"""corral on Ray: the same job across many machines, on Ray Data (the optional ``corral[ray]`` extra).

* :class:`Processor` is a callable class for ``Dataset.map_batches``: each actor owns one corral engine
  with its share of every server's slots, and fills the columns ``run_analysis`` fills.
* ``corral run FILES --ray ADDRESS`` (:func:`corral.ray.job.run_files`) runs table files partition by
  partition, resumably.

The core never imports this package; importing it without Ray installed says how to get it.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401  (the real Ray: absolute import)
except ImportError as exc:  # pragma: no cover - tested by hiding ray in a subprocess
    raise ImportError("corral.ray needs Ray: pip install 'corral[ray]'") from exc

from .processor import Processor
from .slots import fleet_slots, share_slots

__all__ = ["Processor", "fleet_slots", "share_slots"]
