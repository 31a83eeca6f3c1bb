"""The catalog's reference, generated from its pydantic models, and catalog errors a person can act on.

``docs/catalog.md`` is rendered from the models (every key: type, default, allowed values, unit,
meaning), so it cannot drift from what the worker accepts; a test compares it with a fresh render.
Regenerate it with ``make docs`` (``python -m common.catalog_docs > docs/catalog.md``).

``explain`` turns one pydantic error into a line that names the key, the fix (the allowed keys for an
unknown one, what a missing one is, which ``kind`` values exist) and the reference section.
This module walks models given to it and imports none of ours, so ``common.catalog`` can use it.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REFERENCE = "docs/catalog.md"

# Units by naming convention; a field may say its own with json_schema_extra={"unit": ...}.
SUFFIX_UNITS = (("_minutes", "minutes"), ("_seconds", "seconds"), ("_pct_above_baseline", "percent"),
                ("_pp_above_baseline", "percentage points"), ("_drop_pct", "percent"))


# --- walking the models -----------------------------------------------------------------------

def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """The annotation without Optional / Annotated, and a discriminator if the union has one."""
    discriminator = None
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            base, *extra = typing.get_args(tp)
            for meta in extra:
                if isinstance(meta, FieldInfo) and isinstance(meta.discriminator, str):
                    discriminator = meta.discriminator
            tp = base
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, discriminator


def _members(tp: Any) -> list[Any]:
    return [a for a in typing.get_args(tp) if a is not type(None)] \
        if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tag(model: type[BaseModel], discriminator: str) -> str | None:
    field = model.model_fields.get(discriminator)
    args = typing.get_args(field.annotation) if field else ()
    return str(args[0]) if args else None


def _step(tp: Any, key: Any) -> tuple[Any, bool]:
    """The annotation one location step further; the bool says the step was a union's tag (not a key)."""
    tp, discriminator = _unwrap(tp)
    if _is_model(tp):
        field = tp.model_fields.get(str(key))
        return (field.annotation if field else None), False
    origin = typing.get_origin(tp)
    if origin is dict:
        return typing.get_args(tp)[1], False
    if origin is list:
        return typing.get_args(tp)[0], False
    if discriminator:
        for member in _members(tp):
            if _is_model(member) and _tag(member, discriminator) == key:
                return member, True
    return None, False


def locate(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, list[str]]:
    """The annotation at ``loc`` (a pydantic error location) and the path a person would write."""
    tp: Any = root
    path: list[str] = []
    for key in loc:
        tp, was_tag = _step(tp, key)
        if not was_tag:
            path.append(str(key))
        if tp is None:
            break
    return tp, path


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _nearest_model(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    for n in range(len(loc), -1, -1):
        tp, _ = _unwrap(locate(root, loc[:n])[0])
        if _is_model(tp):
            return tp
    return root


# --- errors -----------------------------------------------------------------------------------

def _union_choices(tp: Any) -> tuple[str, list[tuple[str, str]]]:
    tp, discriminator = _unwrap(tp)
    choices = [(_tag(m, discriminator or ""), (m.__doc__ or m.__name__).strip().splitlines()[0].rstrip("."))
               for m in _members(tp) if _is_model(m)]
    return discriminator or "kind", [(t, d) for t, d in choices if t]


def explain(root: type[BaseModel], error: dict[str, Any]) -> str:
    """One line: where (as written in the YAML), what is wrong, the fix, and the reference section."""
    loc, kind, msg = tuple(error["loc"]), error["type"], error["msg"].removeprefix("Value error, ")
    tp, path = locate(root, loc)
    where = ".".join(path) or "(top level)"
    section = _nearest_model(root, loc[:-1] if kind in ("extra_forbidden", "missing") else loc)
    anchors = [_anchor(section)]
    if kind == "extra_forbidden":
        allowed = ", ".join(section.model_fields)
        text = f"unknown key {path[-1]!r}; the keys allowed here are: {allowed}"
    elif kind == "missing":
        field = section.model_fields.get(str(loc[-1]))
        what = f" ({field.description})" if field and field.description else ""
        text = f"required key missing: add {path[-1]}: <{type_text(field.annotation) if field else 'value'}>{what}"
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        discriminator, choices = _union_choices(tp)
        given = f"{discriminator}: {error.get('ctx', {}).get('tag')!r} is not a known kind" \
            if kind == "union_tag_invalid" else f"needs a {discriminator}: key"
        text = (f"{given}; set {discriminator} to one of: "
                + "; ".join(f"{tag!r} ({doc})" for tag, doc in choices)
                + f". The {discriminator} decides which other keys apply")
        anchors = [_anchor(m) for m in _members(_unwrap(tp)[0]) if _is_model(m)]
    else:
        field = section.model_fields.get(str(loc[-1])) if loc else None
        hint = f" ({field.description})" if kind == "literal_error" and field and field.description else ""
        text = msg + hint
    return f"{where}: {text} [{', '.join(f'{REFERENCE}#{a}' for a in anchors)}]"


# --- the reference ----------------------------------------------------------------------------

def type_text(tp: Any, link: bool = False) -> str:
    tp, discriminator = _unwrap(tp)
    origin = typing.get_origin(tp)
    if _is_model(tp):
        return f"[{tp.__name__}](#{_anchor(tp)})" if link else tp.__name__
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" if link else repr(a) for a in typing.get_args(tp))
    if origin is dict:
        return f"map: name -> {type_text(typing.get_args(tp)[1], link)}"
    if origin is list:
        return f"list of {type_text(typing.get_args(tp)[0], link)}"
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(type_text(m, link) for m in _members(tp))
        return text + (f" (chosen by `{discriminator}`)" if discriminator else "")
    names = {str: "text", int: "integer", float: "number", bool: "true/false", typing.Any: "any"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None:
        return ""
    if isinstance(value, BaseModel):
        return "its defaults"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return "the runbook's (below)"
    return "`" + json.dumps(value, ensure_ascii=False) + "`"


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _unit(name: str, field: FieldInfo) -> str:
    if "unit" in _extra(field):
        return str(_extra(field)["unit"])
    return next((unit for suffix, unit in SUFFIX_UNITS if name.endswith(suffix)), "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _models(root: type[BaseModel]) -> Iterator[tuple[type[BaseModel], str]]:
    """Every model reachable from ``root``, breadth first, with the YAML path where it is first used."""
    seen: dict[type[BaseModel], str] = {root: ""}
    queue = [root]
    while queue:
        model = queue.pop(0)
        yield model, seen[model]
        for name, field in model.model_fields.items():
            for sub, suffix in _nested(field.annotation):
                if sub not in seen:
                    prefix = f"{seen[model]}." if seen[model] else ""
                    seen[sub] = f"{prefix}{name}{suffix}"
                    queue.append(sub)


def _nested(tp: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    tp, _ = _unwrap(tp)
    origin = typing.get_origin(tp)
    if _is_model(tp):
        yield tp, suffix
    elif origin is dict:
        yield from _nested(typing.get_args(tp)[1], suffix + ".<name>")
    elif origin is list:
        yield from _nested(typing.get_args(tp)[0], suffix + "[]")
    elif origin in (typing.Union, types.UnionType):
        for m in _members(tp):
            yield from _nested(m, suffix)


def render_reference(root: type[BaseModel], intro: str) -> str:
    out = [intro.rstrip(), ""]
    for model, path in _models(root):
        out += [f"## {model.__name__}", ""]
        if path:
            out += [f"At `{path}`.", ""]
        if model.__doc__ and model is not root:
            out += [" ".join(line.strip() for line in model.__doc__.strip().splitlines()), ""]
        out += ["| key | type | default | unit | meaning |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            allowed = _extra(field).get("allowed")
            kind = type_text(field.annotation, link=True) if not allowed else \
                "one of " + ", ".join(f"`{a}`" for a in allowed)
            out.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} | {_unit(name, field)} | "
                       f"{_cell(field.description or '')} |")
        for name, field in model.model_fields.items():
            value = field.default_factory() if field.default_factory is not None else None  # type: ignore[call-arg]
            if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
                first = next(iter(value.values()))
                keys = list(type(first).model_fields)
                out += ["", f"Default `{name}`:", "", "| | " + " | ".join(keys) + " |",
                        "|---" * (len(keys) + 1) + "|"]
                for k, v in value.items():
                    out.append(f"| {k} | " + " | ".join(_cell(str(getattr(v, f))) for f in keys) + " |")
        out.append("")
    return "\n".join(out)


INTRO = f"""\
# Catalog reference

Generated from the models in `common/catalog.py` and `common/policy.py` by `make docs`
(`python -m common.catalog_docs > {REFERENCE}`); a test fails when this file is out of date.

The catalog is one YAML file (`ROLLBACK_CATALOG`): the fleet this worker may roll back, the people who
may approve, the alert rules and the policy. Unknown keys are errors (each names the keys allowed
there). It is checked when the worker, the receiver or `starter.py doctor` starts, and each time a
rollback reads it. Start from the README's example or the sandbox's `sandbox/catalog.yaml`.

Severities follow the runbook's scale, where **higher is worse**: SEV-0 informational (no impact, two
approvers), SEV-1 minor degradation (< 5 % of users, one approver), SEV-2 significant degradation
(5-25 %, the on-call engineer), SEV-3 major outage (> 25 %, on-call), SEV-4 complete outage or
security breach (on-call, immediate).

Nothing proceeds without people unless `policy.automation_may_proceed` lists its requester
(`<source>:<alert rule name>`, or `auto-rollback:error-rate` for the auto-rollback schedule).
"""


def main() -> None:
    from common.catalog import Catalog

    print(render_reference(Catalog, INTRO), end="")


if __name__ == "__main__":
    main()
