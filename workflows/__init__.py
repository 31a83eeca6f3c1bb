"""Workflows: one module per runbook procedure, plus the shared pieces (gate, timeline,
checks, monitoring in ``base``) that every procedure uses."""
