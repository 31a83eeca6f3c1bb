"""Run the sandbox in the foreground (``python -m sandbox``), e.g. to poke it with the AWS CLI.

``--write-static-catalog`` instead regenerates ``sandbox/catalog.yaml`` and exits.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from sandbox.catalog import DEFAULT_HTTP_BASE, STATIC_CATALOG, write_catalog
from sandbox.runner import Sandbox, aws_env


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=4566, help="moto (AWS) port")
    parser.add_argument("--http-port", type=int, default=8080, help="fake endpoints port")
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    parser.add_argument("--metrics-interval", type=float, default=10)
    parser.add_argument("--write-static-catalog", action="store_true")
    args = parser.parse_args()
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
