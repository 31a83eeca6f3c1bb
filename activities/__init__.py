"""Activities: thin, idempotent wrappers over one outside system each.

Decisions live in workflows. Every activity raises ``ApplicationError`` with
``non_retryable=True`` for errors a retry cannot fix (bad request, access denied, unknown
resource) and a retryable error for everything transient (throttling, 5xx, timeouts).
"""
