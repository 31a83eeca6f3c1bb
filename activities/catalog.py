"""The catalog file, read for workflows (which must not read files themselves)."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common.catalog import Catalog, CatalogError, load_catalog


class CatalogActivities:
    def __init__(self, path: Path) -> None:
        self._path = path

    @activity.defn
    def load_catalog(self) -> Catalog:
        """Read and validate the catalog now, so catalog edits apply without a worker restart."""
        try:
            return load_catalog(self._path)
        except CatalogError as e:
            raise ApplicationError(str(e), type="CatalogError", non_retryable=True) from None
