"""results.json as a report: the document and the JSON Schema that describes it."""

from __future__ import annotations

import json
from typing import Any

from results.model import RunResults
from results.schemafile import SCHEMA_PATH


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of results.json, with a description of every field."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def render_json(results: RunResults) -> str:
    """results.json exactly as ``results.model.save`` writes it."""
    return json.dumps(results.to_json(), indent=2, sort_keys=True) + "\n"
