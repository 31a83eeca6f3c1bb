# Rollback orchestrator worker image.
#
#   docker build -t rollback-orchestrator .
#   docker run --rm -e TEMPORAL_ADDRESS=host:7233 -e ROLLBACK_AWS=real \
#     -e ROLLBACK_CATALOG=/config/catalog.yaml -v "$PWD/catalog.yaml:/config/catalog.yaml:ro" \
#     -p 9464:9464 rollback-orchestrator
#
# docker-compose.yml in this directory runs it next to a Temporal server, Postgres and the Web UI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs (no .git, .venv, .data or tests in the image).
# The sources stay in /app as well: worker.py runs from here and finds the sandbox catalog
# (sandbox/catalog.yaml) next to the code.
COPY pyproject.toml worker.py starter.py receiver.py ./
COPY common/ common/
COPY workflows/ workflows/
COPY activities/ activities/
COPY sandbox/ sandbox/

RUN pip install . \
    && rm -rf build *.egg-info

# Non-root runtime user. Its home holds anything the worker writes (e.g. ROLLBACK_DATA_DIR).
RUN groupadd --system --gid 10001 rollback \
    && useradd --system --uid 10001 --gid rollback --create-home --home-dir /home/rollback rollback \
    && mkdir -p /home/rollback/data \
    && chown -R rollback:rollback /home/rollback
ENV HOME=/home/rollback \
    ROLLBACK_DATA_DIR=/home/rollback/data
USER rollback:rollback

# Prometheus metrics (ROLLBACK_METRICS_PORT, default 9464).
EXPOSE 9464

CMD ["python", "worker.py"]
