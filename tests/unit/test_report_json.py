"""results.json and its JSON Schema: the schema documents every field and validates runs."""

from __future__ import annotations

import json
from dataclasses import fields

import jsonschema
import pytest

from reports.jsonreport import load_schema, render_json
from results.model import SCHEMA_VERSION, Artifact, Category, Cell, RunResults, State
from results.store import save
from tests.resultfactory import ALL_STATES, make_cell, make_run


def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(data) -> list[str]:
    return [e.message for e in validator().iter_errors(data)]


def test_fixture_results_are_valid():
    assert errors(json.loads((ALL_STATES / "results.json").read_text())) == []


def test_every_state_and_a_pending_run_are_valid():
    cells = [make_cell("h", s.value, s) for s in State]
    run = make_run(cells)
    run.interrupted = True
    assert errors(run.to_json()) == []


def test_render_json_is_what_save_writes(tmp_path, all_states):
    results = all_states
    save(results, tmp_path)
    assert render_json(results) == (tmp_path / "results.json").read_text()


def test_schema_version_matches_the_code():
    assert load_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("definition", "cls", "extra"),
    [
        (None, RunResults, {"schema_version", "counts", "classification_rate"}),
        ("cell", Cell, {"id"}),
        ("category", Category, set()),
        ("artifact", Artifact, set()),
    ],
)
def test_schema_documents_every_field(definition, cls, extra):
    schema = load_schema()
    node = schema["$defs"][definition] if definition else schema
    properties = node["properties"]
    assert set(properties) == {f.name for f in fields(cls)} | extra
    for name, prop in properties.items():
        assert "description" in prop or "$ref" in prop, name
        assert len(prop.get("description", "x" * 20)) >= 10, name


def test_schema_rejects_bad_documents(all_states):
    good = all_states.to_json()
    for mutate in (
        lambda d: d.update(schema_version=2),
        lambda d: d["cells"][0].update(state="exploded"),
        lambda d: d["cells"][0].update(surprise=True),
        lambda d: d["cells"][2]["artifacts"][0].update(sha256="not-hex"),
        lambda d: d.pop("hosts"),
    ):
        data = json.loads(json.dumps(good))
        mutate(data)
        assert errors(data), mutate
