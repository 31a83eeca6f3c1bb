"""The sandbox's AWS kept across restarts, as real AWS is: ``make run`` after Ctrl-C or a crash
finds the fleet as the last run left it (a rollback in flight continues on the version it set).

moto has no persistence of its own, so this WSGI middleware (outermost, in front of the AppConfig
stand-in and moto) pickles moto's in-use backends and the stand-in's state to one file after
every request that may change them, BEFORE answering: whatever a caller was told happened is on
disk, so even a SIGKILL loses nothing acknowledged. Requests are served one at a time (the
sandbox serves one on-call engineer; pickling must not race a change). Reads (GET/HEAD,
Describe*/List*/Get* actions) and the sandbox's own metric datapoints are not saved on their own.

Not product code: the product talks to real AWS the same way; only the stand-in needs this.
``make reset`` (``python -m sandbox --reset``) deletes the file: the next start seeds a fresh
fleet at the runbook's incident.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import pickle
import sys
import threading
from collections import defaultdict
import weakref
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from moto.core.base_backend import BackendDict

log = logging.getLogger(__name__)

READ_PREFIXES = ("Describe", "List", "Get", "Head", "BatchGet")
# The sandbox's own metric emitters put datapoints every few seconds: they are saved with the next
# change, not each on its own (a SIGKILL loses a few seconds of synthetic metrics, no AWS change).
UNSAVED = ("PutMetricData",)
FORMAT = 1  # bump when what is pickled changes shape: an old file then asks for 'make reset'


class StateError(RuntimeError):
    """The saved state cannot be loaded (e.g. written by another moto version)."""


def _backend_dicts() -> dict[tuple[str, str], BackendDict]:
    """moto's BackendDicts in use, keyed by (module, attribute) so they can be found again."""
    found: dict[tuple[str, str], BackendDict] = {}
    for bd in list(BackendDict._instances):  # noqa: SLF001 (moto's registry of backends in use)
        module = sys.modules.get(bd.backend.__module__)
        for name, value in vars(module or object()).items():
            if value is bd:
                found[(bd.backend.__module__, name)] = bd
    return found


def _weak_values(items: dict) -> weakref.WeakValueDictionary:
    return weakref.WeakValueDictionary(items)


def _defaultdict(factory: type, items: dict) -> defaultdict:
    return defaultdict(factory, items)


class _Pickler(pickle.Pickler):
    """pickle, plus what moto's Lambda backend holds that pickle cannot: an index of functions by
    ARN (a WeakValueDictionary: its values are held elsewhere in the same snapshot, so they stay
    alive once loaded) and ``defaultdict(lambda: {})`` (saved as ``defaultdict(dict)``)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, weakref.WeakValueDictionary):
            return _weak_values, (dict(obj),)
        if isinstance(obj, defaultdict) and getattr(obj.default_factory, "__name__", "") == "<lambda>":
            return _defaultdict, (type(obj.default_factory()), dict(obj))
        return NotImplemented


def snapshot(standin: Any) -> bytes:
    """moto's in-use backends and the AppConfig stand-in's state, pickled (what ``load`` puts back)."""
    backends = {key: {account: dict(regions) for account, regions in bd.items()}
                for key, bd in _backend_dicts().items()}
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(
        {"format": FORMAT, "backends": backends, "appconfig": standin.state()})
    return out.getvalue()


def restore(path: Path, standin: Any) -> None:
    """Put the saved backends back into moto (in place: moto's modules hold the same dicts)."""
    try:
        load(path.read_bytes(), standin)
    except Exception as e:  # noqa: BLE001 (any unpickling failure means the same thing to the user)
        raise StateError(f"the sandbox's saved AWS state {path} cannot be loaded ({type(e).__name__}: {e}); "
                         "start over with 'make reset' (it deletes the sandbox's state)") from None


def load(data: bytes, standin: Any) -> None:
    """Put a ``snapshot`` back into moto and the stand-in (fresh objects each time: the snapshot is kept)."""
    saved = pickle.loads(data)
    if saved.get("format") != FORMAT:
        raise ValueError(f"format {saved.get('format')}, expected {FORMAT}")
    for (module, name), accounts in saved["backends"].items():
        bd = getattr(importlib.import_module(module), name)
        for account, regions in accounts.items():
            per_account = bd[account]  # creates (and registers) the account's backend dict
            for region, backend in regions.items():
                dict.__setitem__(per_account, region, backend)
    standin.load_state(saved["appconfig"])


def _is_read(environ: dict) -> bool:
    method = environ.get("REQUEST_METHOD", "")
    if method in ("GET", "HEAD", "OPTIONS"):
        return not environ.get("PATH_INFO", "").startswith("/moto-api/reset")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    action = target.rsplit(".", 1)[-1] if target else ""
    if not action:
        action = (parse_qs(environ.get("QUERY_STRING", "")).get("Action") or [""])[0]
    if not action and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
        action = (parse_qs(body.decode(errors="replace")).get("Action") or [""])[0]
    return action.startswith(READ_PREFIXES) or action in UNSAVED


class Persisted:
    """WSGI middleware: serve ``app`` one request at a time, saving the state after each change."""

    def __init__(self, app: Callable, standin: Any, path: Path) -> None:
        self.app, self.standin, self.path = app, standin, Path(path)
        self._lock = threading.RLock()
        self.deferred = False  # while seeding: one save at the end instead of one per request

    @contextmanager
    def saved_once(self) -> Iterator[None]:
        """Many changes (seeding the fleet), one save when they are done."""
        self.deferred = True
        try:
            yield
        finally:
            self.deferred = False
        self.save()

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(snapshot(self.standin))
            os.replace(tmp, self.path)  # atomic: a crash leaves the old file or the new, never half

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self._lock:
            read = _is_read(environ)
            answered: list[tuple[str, list, Any]] = []

            def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
                answered.append((status, headers, exc_info))
                return lambda data: None

            result = self.app(environ, capture)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()
            if not read and not self.deferred:
                try:
                    self.save()
                except Exception:  # noqa: BLE001 (an unsaved change is logged; the answer still goes out)
                    log.exception("sandbox: could not save the AWS state to %s", self.path)
        status, headers, exc_info = answered[-1]
        start_response(status, headers, exc_info)
        return [body]


# What survives 'make reset': who you are (the sandbox's OIDC key, your 'starter.py login' tokens,
# the automation key), not what happened (the rollbacks' history, the sandbox's AWS).
KEPT_ON_RESET = ("oidc-signing-key.pem", "tokens", "automation.key")


def start_over(data_dir: Path) -> list[str]:
    """``make reset``: delete the sandbox's AWS state and the dev server's history together (one
    without the other would split the world again); returns what was deleted. Refuses while a
    worker runs on the folder (common/leftovers.py)."""
    import shutil

    from common.leftovers import Leftovers

    data_dir = Path(data_dir)
    Leftovers(data_dir).clean_up()  # raises FolderInUse while a worker runs; stops what a dead one left
    deleted = []
    for entry in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
        if entry.name in KEPT_ON_RESET:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        deleted.append(entry.name)
    return deleted
