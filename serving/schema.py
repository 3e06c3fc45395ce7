"""The JSON cvkeras writes and prints, as data: one schema per document kind, versioned.

Every document carries ``"schema": "cvkeras.<kind>/<version>"``. :data:`SCHEMAS` lists each field's path,
type, unit and meaning (the field tables, one module per document family: ``schema_training``,
``schema_export``, ``schema_serving``); ``docs/json.md`` is generated from it (:func:`markdown`, ``python -m
cvkeras.serving.schema > docs/json.md``) and the tests check each command's real output against it
(:func:`problems`), so the code, the doc and the output cannot drift apart. Conventions: :data:`INTRO`.
Types in :class:`Field` are joined with ``|`` (``number|null``). Standard library only (the device side
uses it too).
"""

from __future__ import annotations

import re
from typing import Any

from cvkeras.serving.errors import quote
from cvkeras.serving.schema_export import EXPORT_FIELDS
from cvkeras.serving.schema_fields import Schema
from cvkeras.serving.schema_serving import BENCHMARK_FIELDS, PREDICTION_FIELDS, VALIDATION_FIELDS
from cvkeras.serving.schema_training import CHECK_FIELDS, FINETUNE_FIELDS, METRICS_FIELDS, MODELS_FIELDS

INTRO = """\
Generated from `serving/schema.py` (`python -m cvkeras.serving.schema > docs/json.md`);
`tests/serving/test_json_schema.py` checks that this file is up to date and that every command's real JSON matches it.

- Every document carries `"schema": "cvkeras.<kind>/<version>"`; the version goes up when a field changes
  meaning or is removed (added fields do not change it).
- **One unit per kind.** Accuracies, agreements, accuracy drops and their intervals, and the gates are
  **fractions 0..1**. Only the `--max-accuracy-drop` flag and the console tables speak in percentage points;
  the JSON carries `points / 100` (`0.01` = one point). Sizes are `size_bytes` (bytes); latencies are
  `latency_ms_per_image` (mean model time per image, ms) and its `_p50`/`_p95`/`_rounds` variants in
  `benchmark`; durations in `seconds` or `_ms`; probabilities 0..1. A figure has one name in every
  document: an `export_report.json` artifact row and `validate --json` share `paired_accuracy`,
  `n_paired`, `n_reference`, `accuracy_drop`, `agreement`, `max_abs_diff`, `latency_ms_per_image`.
- **Paths**: files inside a run directory are relative to it (`export/model_int8.onnx`); a path the user
  passed (an image, a model, `--data`) is printed as given.
- Field paths: `a.b` is key `b` of object `a`, `a[]` an item of list `a`, `*` any key (a class name).
  Types: `int`, `number`, `string`, `bool`, `object`, `list`, `list[...]`; "or null" may be null. Fields
  marked optional appear only in the case their meaning names.\
"""

#: Every document kind cvkeras writes or prints, by kind (the order of docs/json.md).
SCHEMAS: dict[str, Schema] = {s.kind: s for s in (
    Schema("metrics", 1, "metrics.json, `evaluate --json`", "`RUN/metrics.json` (val), `metrics-test.json` "
           "(`--split test`), `metrics-data.json` (`--data`); `cvkeras evaluate --json` prints it", METRICS_FIELDS),
    Schema("export_report", 2, "export_report.json, `export --json`", "`RUN/export/export_report.json`; "
           "`cvkeras export --json` prints it", EXPORT_FIELDS),
    Schema("prediction", 1, "`predict --json`", "one line per image on stdout", PREDICTION_FIELDS),
    Schema("validation", 2, "`validate --json`", "stdout", VALIDATION_FIELDS),
    Schema("benchmark", 1, "`benchmark --json`", "stdout", BENCHMARK_FIELDS),
    Schema("models", 1, "`models --json`", "stdout", MODELS_FIELDS),
    Schema("finetune", 1, "`finetune --json`", "stdout (training progress is not printed)", FINETUNE_FIELDS),
    Schema("check", 1, "`check --json`", "stdout; `check --output DIR` also writes `DIR/check.json`", CHECK_FIELDS),
)}


def schema_id(kind: str) -> str:
    """``"cvkeras.<kind>/<version>"`` for a document kind of :data:`SCHEMAS`."""
    return SCHEMAS[kind].id


def points_to_fraction(value: Any) -> Any:
    """A drop in points (or a list of them) as a fraction, for the JSON; None stays None."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [v / 100.0 for v in value]
    return value / 100.0


# --- checking a document against its schema -------------------------------------------------------------

#: export_report.json artifact keys before schema 1 (cvkeras 0.1 runs) and their names since.
_LEGACY_ARTIFACT_KEYS = {"accuracy": "paired_accuracy", "n": "n_paired", "n_agreement": "n_reference",
                         "file_size_bytes": "size_bytes", "latency_ms": "latency_ms_per_image"}


def upgrade_export_report(doc: dict[str, Any]) -> dict[str, Any]:
    """An ``export_report.json`` document in the current names and units: one written before schemas
    (no ``schema`` key) had the drop in points and other names; returns a converted copy (or ``doc``)."""
    if not isinstance(doc, dict) or "schema" in doc:
        return doc
    arts = []
    for art in doc.get("artifacts") or []:
        art = {_LEGACY_ARTIFACT_KEYS.get(k, k): v for k, v in art.items()}
        for key in ("accuracy_drop", "accuracy_drop_ci"):
            if key in art:
                art[key] = points_to_fraction(art[key])
        arts.append(art)
    return {**doc, "artifacts": arts, "schema": schema_id("export_report")}


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, value)`` for every object key, and ``(list[], item)`` for every object in a list."""
    out: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.append((path, v))
            out += _flatten(v, path)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict):
                out.append((prefix + "[]", v))
                out += _flatten(v, prefix + "[]")
    return out


def _pattern(path: str) -> re.Pattern[str]:
    parts = [(".+?" if p == "*" else re.escape(p)) for p in re.split(r"(\*)", path)]
    return re.compile("".join(parts) + r"\Z")


def _type_ok(value: Any, types: str) -> bool:
    for t in types.split("|"):
        if t == "null" and value is None:
            return True
        if t == "bool" and isinstance(value, bool):
            return True
        if isinstance(value, bool):
            continue
        if (t == "int" and isinstance(value, int)) or (t == "number" and isinstance(value, int | float)):
            return True
        if (t == "string" and isinstance(value, str)) or (t == "object" and isinstance(value, dict)):
            return True
        if t.startswith("list") and isinstance(value, list):
            inner = t[5:-1] if t.startswith("list[") else ""
            if not inner or all(_type_ok(v, inner) for v in value):
                return True
    return False


def problems(doc: Any, kind: str) -> list[str]:
    """Everything in ``doc`` that :data:`SCHEMAS` ``[kind]`` does not document, types otherwise, or misses.

    Empty when the document matches: its ``schema`` id, every path documented with the documented type,
    every required field present in every object that should hold it.
    """
    schema = SCHEMAS[kind]
    if not isinstance(doc, dict):
        return [f"not a JSON object: {type(doc).__name__}"]
    out = [] if doc.get("schema") == schema.id else [f"schema is {quote(doc.get('schema'))}, not {quote(schema.id)}"]
    compiled = [(f, _pattern(f.path)) for f in schema.fields]
    flat = _flatten(doc)
    for path, value in flat:
        if path.endswith("[]"):
            continue  # a list item: its list and its keys are documented
        # the most specific documented path wins (``per_class.*.f1`` over ``per_class.*``)
        field = max((f for f, rx in compiled if rx.match(path)), key=lambda f: len(f.path), default=None)
        if field is None:
            out.append(f"{path}: not documented")
        elif not _type_ok(value, field.type):
            out.append(f"{path}: {type(value).__name__} {quote(value, 40)} is not {field.type}")
    for f in schema.fields:
        parent, _, key = f.path.rpartition(".")
        if not f.required or key == "*":
            continue
        rx = _pattern(parent) if parent else None
        holders = [doc] if rx is None else [v for p, v in flat if isinstance(v, dict) and rx.match(p)]
        if any(key not in h for h in holders):
            out.append(f"{f.path}: missing")
    return out


def markdown() -> str:
    """``docs/json.md``: every document kind with its fields (generated; the tests compare)."""
    lines = ["# cvkeras JSON", "", INTRO, ""]
    for s in SCHEMAS.values():
        lines += [f"## `{s.id}`: {s.title}", "", f"Where: {s.where}.", "",
                  "| field | type | unit | meaning |", "|---|---|---|---|"]
        for f in s.fields:
            opt = "" if f.required else " (optional)"
            lines.append(f"| `{f.path}` | {f.type.replace('|', ' or ')} | {f.unit or '-'} | {f.doc}{opt} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
