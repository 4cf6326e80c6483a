"""The catalog client: `CatalogClient` for reads, writes and watches against rcds replicas."""

from snipe.catalog.client import CatalogClient, PutResult, Rejected, Watch, WatchEvent
from snipe.catalog.entry import Entry

__all__ = ["CatalogClient", "Entry", "PutResult", "Rejected", "Watch", "WatchEvent"]
