"""The local AWS sandbox ``make run`` uses when no real AWS is configured.

moto in server mode holds the runbook's fleet (``fleet``: api-service on the bad v1.2.3 with
v1.2.2 to roll back to, plus a blue/green pair behind an ALB); ``endpoints`` fakes the
service's health/ready/version/search URLs from moto's live state; ``metrics`` puts
CloudWatch datapoints that show the incident for v1.2.3 and the baseline for every other
version; ``prometheus`` (where Debian's prometheus is installed) records per-version request
histograms and runs a Prometheus scraping them, for a real p95; ``catalog`` describes it all for
``common.catalog``. ``Sandbox`` runs the lot.
"""

from sandbox.fleet import Fleet
from sandbox.runner import Sandbox, SandboxInfo, aws_env

__all__ = ["Fleet", "Sandbox", "SandboxInfo", "aws_env"]
