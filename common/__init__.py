"""Pieces shared by the worker, the CLI, workflows and activities: models, catalog, policy, settings."""

TASK_QUEUE_DEFAULT = "rollbacks"

# Custom search attributes (all Keyword), registered on the server at start-up.
SEARCH_ATTRIBUTES = ("RollbackKind", "RollbackTarget", "RollbackSeverity", "RollbackPhase")
