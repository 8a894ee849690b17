"""HTTP for corral: one interface (`HttpClient`), two clients behind it, one factory to pick them."""

from __future__ import annotations

from .client import (
                     DEFAULT_MAX_BODY,
                     Headers,
                     HttpClient,
                     HttpError,
                     HttpResponse,
                     HttpStream,
                     RoutingClient,
                     default_client,
)

__all__ = ["DEFAULT_MAX_BODY", "Headers", "HttpClient", "HttpError", "HttpResponse", "HttpStream",
           "RoutingClient", "default_client"]
