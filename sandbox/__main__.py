"""Run the sandbox in the foreground (``python -m sandbox``), e.g. to poke it with the AWS CLI.

``--write-static-catalog`` instead regenerates ``sandbox/catalog.yaml`` and exits; ``--reset``
(``make reset``) deletes the sandbox's AWS state and the rollbacks' history so the next ``make run``
starts over at the runbook's incident.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from sandbox.catalog import DEFAULT_HTTP_BASE, STATIC_CATALOG, write_catalog
from common.leftovers import FolderInUse
from sandbox.runner import Sandbox, aws_env
from sandbox.state import KEPT_ON_RESET, start_over


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=4566, help="moto (AWS) port")
    parser.add_argument("--http-port", type=int, default=8080, help="fake endpoints port")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ROLLBACK_DATA_DIR", ".data")))
    parser.add_argument("--metrics-interval", type=float, default=10)
    parser.add_argument("--write-static-catalog", action="store_true")
    parser.add_argument("--reset", action="store_true",
                        help="delete the sandbox's AWS state and the rollbacks' history (make reset)")
    args = parser.parse_args()
    if args.reset:
        try:
            deleted = start_over(args.data_dir)
        except FolderInUse as e:
            raise SystemExit(f"not reset: {e}") from None
        print(f"reset {args.data_dir}: deleted {', '.join(deleted) or 'nothing (already clean)'}; kept "
              f"{', '.join(KEPT_ON_RESET)}. The next 'make run' starts over at the runbook's incident.")
        return
    if args.write_static_catalog:
        print(write_catalog(STATIC_CATALOG, DEFAULT_HTTP_BASE, None))
        return
    logging.basicConfig(level=logging.INFO)
    with Sandbox(args.port, args.http_port, args.data_dir, args.metrics_interval) as info:
        for key, value in aws_env(info.endpoint_url).items():
            print(f"export {key}={value}")
        print(f"# endpoints: {info.http_base}/api/version   catalog: {info.catalog_path}")
        print(f"# latency_p95: {info.latency_source}")
        print("# Ctrl-C stops the sandbox")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
