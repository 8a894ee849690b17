"""Readers that stream records from input files; they know nothing of HTTP."""

from .jsonl import Defaults, PromptFile, ScanReport

__all__ = ["Defaults", "PromptFile", "ScanReport"]
