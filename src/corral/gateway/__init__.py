"""`corral gateway`: OpenAI's Files and Batches API over corral's engine, durable, with a dashboard.

Teams that own their GPUs get the Batch API's workflow (upload a JSONL, create a batch, poll it,
download the output and error files) on their own fleet, from any tool that speaks that API. Every
batch runs on the one engine run the gateway keeps open (`service.py`), fed fairly from all active
batches (`scheduler.py`); answers go to corral's journal, so a gateway killed mid-batch and started
again on the same ``--state`` sends again only what was in flight.

Modules: ``db.py`` (the SQLite file for files and batches), ``files.py`` (uploads and outputs on
disk), ``batches.py`` (the batch record and its state machine), ``validate.py`` (input checks with
line numbers), ``lines.py`` (OpenAI's output and error lines), ``jobs.py`` (one batch while it runs),
``service.py`` (the gateway itself), ``app.py`` (the HTTP routes), ``dashboard.py`` (the page at /),
``main.py`` (start and stop: ``serve``).
"""

from .main import serve
from .service import Gateway, GatewayOptions

__all__ = ["Gateway", "GatewayOptions", "serve"]
