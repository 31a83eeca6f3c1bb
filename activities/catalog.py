"""The catalog file, read for workflows (which must not read files themselves)."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common.catalog import Catalog, CatalogError, load_catalog
from common.catalog_scope import CatalogCache, CatalogScope, scoped


class CatalogActivities:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._cache = CatalogCache(path)

    @activity.defn
    def load_catalog(self) -> Catalog:
        """Read and validate the catalog now, so catalog edits apply without a worker restart.
        (Runs recorded before ``catalog_for``: the whole catalog, into the history.)"""
        try:
            return load_catalog(self._path)
        except CatalogError as e:
            raise ApplicationError(str(e), type="CatalogError", non_retryable=True) from None

    @activity.defn
    def catalog_for(self, scope: CatalogScope) -> Catalog:
        """The rollback's own entries, the people, identity and policy (common/catalog_scope.py), from
        the file as it is now (parsed again only when it changed): edits apply without a restart."""
        try:
            return scoped(self._cache.get(), scope)
        except CatalogError as e:
            raise ApplicationError(str(e), type="CatalogError", non_retryable=True) from None
