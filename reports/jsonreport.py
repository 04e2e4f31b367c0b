"""results.json as a report, the JSON Schema that describes it, and the one way the tool
prints JSON: strict (RFC 8259) documents only.

Python's ``json.dumps`` writes ``NaN`` and ``Infinity`` for non-finite floats by
default; no strict parser reads them back (a CI step's ``fromJSON``, ``jq``, browsers).
A number that is not finite (an estimate summed from absurd recorded durations, a
duration read from a foreign run) is printed as ``null``: unknown, which is what it is.
"""

from __future__ import annotations

import json
import math
from typing import Any

from results.model import RunResults
from results.schemafile import SCHEMA_PATH


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in lists and dict values too) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` for output: never NaN or Infinity (``allow_nan=False`` holds it)."""
    return json.dumps(finite(value), allow_nan=False, **options)


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of results.json, with a description of every field."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def render_json(results: RunResults) -> str:
    """results.json as ``results.store.save`` writes it (a non-finite number as null)."""
    return dumps(results.to_json(), indent=2, sort_keys=True) + "\n"
