"""``python -m tests.fakes``: run fake servers until SIGTERM (see ``tests.fakes.cli``)."""

from __future__ import annotations

import sys

from .cli import run_fake_servers_cli

sys.exit(run_fake_servers_cli())
