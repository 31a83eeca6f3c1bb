"""What the Web UI's Start Workflow form needs without the README: each procedure's input schema
(``starter.py schema KIND``), minimal examples that really are valid inputs, and a bad input's
short message (no pydantic text, no URLs). The browser side is tests/test_web_ui_on_its_own.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.api import PROCEDURES
from common.web_ui import GRADUAL_EXAMPLE, example, explain, schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", sorted(PROCEDURES))
def test_each_example_is_a_valid_input_and_the_schema_names_its_fields(kind):
    wf_type, model, target_field = PROCEDURES[kind]
    model.model_validate(example(kind))
    s = schema(kind)
    assert s["title"] == f"{wf_type} input"
    assert {"severity", "requested_by", "reason"} <= set(s["required"])
    assert target_field in s["properties"] and s["examples"] == [example(kind)]
    assert schema(wf_type) == s  # the Web UI's Workflow Type works too


def test_the_gradual_example_is_valid():
    PROCEDURES["service"][1].model_validate(GRADUAL_EXAMPLE)


def test_a_bad_input_is_explained_in_one_short_paragraph_with_an_input_to_paste():
    model = PROCEDURES["service"][1]
    with pytest.raises(ValidationError) as e:
        model.model_validate({"service": "api", "severity": "SEV-9", "requested_by": "zoe", "reazon": "typo"})
    text = explain(e.value)
    assert text.startswith("bad ServiceRollback input: 'severity': Input should be 'SEV-0'")
    assert "'reason': required" in text and "'reazon': not a field of this input (a typo?)" in text
    assert f"A minimal valid input to paste: {json.dumps(example('service'))}" in text
    assert "pydantic" not in text and "http" not in text and "\n" not in text


def test_starter_schema_prints_the_json_schema():
    out = subprocess.run([sys.executable, "starter.py", "schema", "flag"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == schema("flag")
