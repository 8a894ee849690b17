"""Embeddings at scale: batched, spread over every server, resumable, one vector per distinct text."""

from .api import EmbedError, EmbedReport, embed, embed_async, embed_file, embed_file_async
from .job import DimensionError, EmbedCounts, EmbedSpec

__all__ = ["DimensionError", "EmbedCounts", "EmbedError", "EmbedReport", "EmbedSpec", "embed",
           "embed_async", "embed_file", "embed_file_async"]
