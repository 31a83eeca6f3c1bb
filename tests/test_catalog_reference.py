"""The catalog reference (docs/catalog.md) is generated from the models and current; catalog errors name
the key, the fix and the reference section; alert rules and the automation list are checked when the file
is loaded, so the worker, the receiver and `starter.py doctor` refuse a typo at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from common.api import PROCEDURES
from common.catalog import KINDS, Catalog, CatalogError, load_catalog
from common.catalog_docs import INTRO, _models, render_reference

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "catalog.md"
STATIC = ROOT / "sandbox" / "catalog.yaml"


def base() -> dict:
    return yaml.safe_load(STATIC.read_text())


def problems(tmp_path: Path, data: dict) -> list[str]:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(path)
    text = str(excinfo.value)
    assert text.startswith(f"{path}: ") and "(reference: docs/catalog.md)" in text.splitlines()[0]
    return [line.removeprefix("  - ") for line in text.splitlines()[1:]]


def test_the_committed_reference_is_current():
    assert REFERENCE.read_text() == render_reference(Catalog, INTRO), \
        "docs/catalog.md is out of date: run 'make docs' and commit it"


def test_the_reference_has_every_key_with_type_default_and_unit():
    text = REFERENCE.read_text()
    for model, _ in _models(Catalog):
        section = text.split(f"## {model.__name__}\n", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in section, f"{model.__name__}.{name} is missing from docs/catalog.md"
    # baseline is only a fallback now (docs/verdicts.md): optional, with its unit stated
    assert re.search(r"\| `baseline` \| number \|  \| the metric's \(see unit\) \| fallback baseline", text)
    assert re.search(r"\| `kind` \| one of `error_rate`, `latency_p95`, `business` \|", text)
    assert "| `approval_timeout_minutes` | number | `240` | minutes |" in text
    assert "SEV-0 informational" in text and "SEV-4 complete outage" in text  # the runbook's scale, stated


def anchors() -> set[str]:
    return {line[3:].strip().lower() for line in REFERENCE.read_text().splitlines() if line.startswith("## ")}


def test_model_errors_name_the_fix_and_link_the_reference(tmp_path):
    data = base()
    api = data["services"]["api"]
    api["ecs"]["clustr"] = "rastup-prod"  # a typo
    api["metrics"][1].pop("name")  # baseline is an optional fallback now; name is required
    api["metrics"][0]["kind"] = "errors"
    data["configs"] = {"a": {"application": "x"}, "b": {"kind": "vault"}}
    found = problems(tmp_path, data)
    assert found[0].startswith("services.api.ecs.clustr: unknown key 'clustr'; the keys allowed here are: "
                               "cluster, service, container [docs/catalog.md#ecsref]")
    assert "services.api.metrics.0.kind: Input should be 'error_rate', 'latency_p95' or 'business' (how it is " \
           "judged against baseline" in found[1]
    assert found[2].startswith("services.api.metrics.1.name: required key missing: add name: "), found[2]
    assert "shown in checks" in found[2]
    assert found[3].startswith("configs.a: needs a kind: key; set kind to one of: 'appconfig' (")
    assert "'secret' (A Secrets Manager secret" in found[3] and "decides which other keys apply" in found[3]
    assert found[4].startswith("configs.b: kind: 'vault' is not a known kind; set kind to one of: 'appconfig'")
    for line in found:
        for anchor in re.findall(r"docs/catalog\.md#([a-z]+)", line):
            assert anchor in anchors(), line
    assert "Unable to extract tag" not in "\n".join(found) and "Extra inputs" not in "\n".join(found)


def test_alert_rules_are_checked_against_their_procedures(tmp_path):
    data = base()
    data["alert_rules"] += [
        {"name": "typo", "match": {"alertname": "X"}, "kind": "servce", "input": {"service": "{labels.service}"}},
        {"name": "bad-input", "match": {"alertname": "Y"}, "kind": "flag",
         "input": {"flag": "nope", "actoin": "disable"}},
        {"name": "incomplete", "match": {"alertname": "Z"}, "kind": "flag",
         "input": {"flag": "{labels.flag}", "action": "disable"}},
    ]
    found = problems(tmp_path, data)
    assert found == [
        "alert_rules.4.kind: 'servce' is not a procedure; use one of: service, database, frontend, lambda, infra, "
        "flag, config, release [docs/catalog.md#alertrule]",
        "alert_rules.5.input.action: required by flag rollbacks: add it (a value or a template such as "
        "{labels.action}) [docs/catalog.md#alertrule]",
        "alert_rules.5.input.actoin: not an input of flag rollbacks; its inputs are: dry_run, monitor_minutes, flag, "
        "action, cities, all_cities, percentage [docs/catalog.md#alertrule]",
        "alert_rules.5.input.flag: flag 'nope' is not in the catalog (known: new_feature_enabled, payments_disabled); "
        "add it under 'flags:' or fix the name [docs/catalog.md#alertrule]",
        "alert_rules.6.input: disable needs cities (a list) or all_cities: true, not both and not neither "
        "[docs/catalog.md#alertrule]",
    ]
    # Checked on load only: a catalog recorded in a running workflow's history still replays.
    Catalog.model_validate(data)


def test_the_automation_list_is_explicit_and_checked(tmp_path):
    data = base()
    assert data["policy"]["automation_may_proceed"] == ["auto-rollback:error-rate", "alertmanager:high-error-rate"]
    data["policy"]["automation_may_proceed"] = ["alertmanager:high-eror-rate"]
    found = problems(tmp_path, data)
    assert found == ["policy.automation_may_proceed: 'alertmanager:high-eror-rate' is neither "
                     "'auto-rollback:error-rate' (the auto-rollback schedule) nor '<source>:<name of a rule under "
                     "alert_rules>' (rules: business-metric-drop, high-error-rate, high-latency, "
                     "security-vulnerability), e.g. 'alertmanager:high-error-rate' [docs/catalog.md#policy]"]
    # the README's example rules copied into a catalog without a policy: nothing proceeds without people
    data.pop("policy")
    path = tmp_path / "copied.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_catalog(path).policy.automation_may_proceed == []


def test_alert_rule_kinds_are_the_procedures():
    assert list(KINDS) == list(PROCEDURES)
