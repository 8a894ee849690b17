"""Readers that stream records from input files; they know nothing of HTTP.

Prompt files are here; table files (``sources.tables``, with ``delimited``, ``excel`` and
``table_checks``) need the ``corral[tables]`` extra and are imported from their modules."""

from .jsonl import Defaults, PromptFile, ScanReport

__all__ = ["Defaults", "PromptFile", "ScanReport"]
