"""``make bench``: issue 13's targets measured against the sandbox, side by side with a bare boto3
script making the same calls in the same run. A benchmark, not a test: it prints numbers and a
verdict per target, and fails nothing. See docs/benchmarks.md."""
