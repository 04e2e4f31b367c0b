"""Where the JSON Schema of results.json lives: beside the model it describes."""

from __future__ import annotations

from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "results.schema.json"
