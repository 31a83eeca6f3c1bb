"""The fast path to the first change (issue 13): what runs before a rollback's first change, and how.

Runs started since ``FAST_PATH`` differ from earlier ones (which replay as they ran) in four ways:

- the catalog: ``CatalogActivities.catalog_for`` returns only the rollback's own entries, the
  people, identity and policy (common/catalog_scope.py), parsed once per file change, instead of
  the whole file in every rollback's history and memory;
- short reads the next step waits for (that catalog entry, a proof of identity, what ECS runs and
  the target) are local activities (workflows/options.py ``read``): no task-queue round trip;
- ECS versions: the current revision and the revisions down to the target, not every revision
  (activities/ecs.py ``identify``);
- the start announcement in #incidents is posted alongside the work, not before it; an approval
  request waits for it, so #incidents still reads in order.
"""

FAST_PATH = "fast-path"
