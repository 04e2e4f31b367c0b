"""matrix.config.schema: one key table per file kind, and the helpers the kinds share."""

import enum

import pytest

from matrix.config.diagnostics import ConfigError, IssueCollector
from matrix.config.schema import (
    Derived,
    Invalid,
    Key,
    Reader,
    closest,
    describe,
    enum_parser,
    load_dir,
    option_value,
    parse_bool,
    read_keys,
    select,
)
from matrix.config.yamlload import load_yaml


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


def _count(value, reader, path):
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid("must be a whole number")
    return value


KEYS = (
    Key("name", lambda v, r, p: str(v), "a name", required=True),
    Key("size", _count, "how many", 3),
    Key("double", _count, "twice size", Derived(lambda values, r: values["size"] * 2, "2 x size")),
    Key("colour", enum_parser(Colour), "a colour", "red"),
    Key("loud", parse_bool, "shout", False),
)


def read(tmp_path, text, **overrides):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    doc = load_yaml(path)
    issues = IssueCollector()
    values = read_keys(KEYS, doc.data, Reader(doc, issues), overrides=overrides or None,
                       override_issue=lambda name, message: doc.issue((), f"--{name}: {message}"))
    return values, [str(i) for i in issues.issues]


def test_defaults_are_parsed_and_derived_from_the_final_values(tmp_path):
    values, problems = read(tmp_path, "name: x\nsize: 5\n")
    assert problems == []
    assert values == {"name": "x", "size": 5, "double": 10, "colour": Colour.RED, "loud": False}
    values, _ = read(tmp_path, "name: x\nsize: 5\n", size=7)
    assert values["double"] == 14


def test_every_problem_names_line_and_key_and_the_closest_key(tmp_path):
    _, problems = read(tmp_path, "size: many\ncolor: blue\ncolour: green\n")
    assert any(p.endswith("f.yaml:1: size: must be a whole number") for p in problems)
    assert any("f.yaml:2: color: unknown key (did you mean 'colour'?); known: name, size"
               in p for p in problems)
    assert any(p.endswith("f.yaml:3: colour: must be one of: red, blue, got 'green'")
               for p in problems)
    assert any(p.endswith("f.yaml:1: missing required key 'name'") for p in problems)


def test_one_did_you_mean_and_one_glob_selector():
    assert closest("debian-bookwrm", ["debian-bookworm", "fedora-43"]) == \
        " (did you mean 'debian-bookworm'?)"
    assert closest("zzz", ["a"]) == ""
    names = ["a1", "a2", "b1"]
    assert select(names, []) == (names, [])
    assert select(names, ["b*", "a2", "c*"]) == (["a2", "b1"], ["c*"])


def test_the_directory_loader_checks_names_and_reports_every_file(tmp_path):
    (tmp_path / "good.yaml").write_text("name: good\n")
    (tmp_path / "other.yaml").write_text("name: else\n")

    def load(path):
        return load_yaml(path).data

    with pytest.raises(ConfigError) as err:
        load_dir([tmp_path, tmp_path / "missing"], load, lambda d: d["name"], "thing")
    text = str(err.value)
    assert "other.yaml:1: name: 'else' differs from the file name 'other'" in text
    assert "missing: thing directory does not exist" in text


def test_help_text_and_command_line_values():
    text = describe(KEYS)
    assert "  size" in text and "(default: 3)" in text and "(default: 2 x size)" in text
    assert "(required)" in text.splitlines()[0]
    assert option_value("12") == 12 and option_value("20m") == "20m"
