"""A rollback's own part of the catalog: the entries it acts on, their dependencies, the people,
the identity settings and the policy. Nothing else travels into a workflow's history or memory
(the whole sandbox catalog was 130 of a waiting rollback's 137 KB; a 1,000-entry catalog would be
1,000 times that in every rollback).

The file is parsed once per change (key: path, size, mtime; the C YAML loader when libyaml is
there) and validated as a whole, so a catalog error still stops every rollback with the same
message; then ``scoped`` cuts out what one rollback needs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pydantic import BaseModel, Field

from common.catalog import Catalog, load_catalog

# kind -> the catalog section its names are looked up in
SECTION = {"service": "services", "database": "databases", "frontend": "sites", "lambda": "functions",
           "infra": "stacks", "flag": "flags", "config": "configs"}


class CatalogScope(BaseModel):
    """What a rollback asks of the catalog: its kind and the catalog names it acts on."""

    kind: str
    names: list[str] = Field(default_factory=list)


def scoped(catalog: Catalog, scope: CatalogScope) -> Catalog:
    """The catalog cut down to ``scope``'s entries and what they refer to (stores, services).

    A name that is not in the catalog returns the whole catalog: the procedure's own lookup then
    fails as it always did, naming what exists (a rare error path; its size does not matter)."""
    section = SECTION.get(scope.kind)
    if section is None or any(n not in getattr(catalog, section) for n in scope.names):
        return catalog
    picked: dict[str, dict] = {s: {} for s in SECTION.values()}
    picked[section] = {n: getattr(catalog, section)[n] for n in scope.names}
    if scope.kind == "flag":  # an error names the catalog's kill switches
        picked["flags"].update({n: f for n, f in catalog.flags.items() if f.kill_switch})
    services = {s for entry in [*picked["flags"].values(), *picked["configs"].values()] for s in entry.services}
    services |= {db.app_service for db in picked["databases"].values() if db.app_service}
    picked["services"].update({s: catalog.services[s] for s in services})
    stores = {f.store for f in picked["flags"].values()}
    return catalog.model_copy(update={
        **picked, "alert_rules": [],
        "flag_stores": {k: v for k, v in catalog.flag_stores.items() if k in stores}})


class CatalogCache:
    """The parsed, validated catalog of one file, read again only when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._catalog: Catalog | None = None
        self.loads = 0  # how often the file was parsed (tests)

    def get(self) -> Catalog:
        try:
            st = os.stat(self._path)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None  # load_catalog says why
        with self._lock:
            if key is None or key != self._key or self._catalog is None:
                self._catalog = load_catalog(self._path)
                self._key = key
                self.loads += 1
            return self._catalog
