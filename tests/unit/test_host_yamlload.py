"""matrix.config.yamlload: safe_load-compatible data plus the line of every key."""

from pathlib import Path

import pytest
import yaml

from matrix.config.diagnostics import ConfigError
from matrix.config.yamlload import format_key, load_yaml

SAMPLE = """\
a: 1
b:
  c: [1, 2]
  d:
    - x
    - y: 2
anchor: &base
  k: 1
merged:
  <<: *base
  j: 2
"""


def write(tmp_path: Path, text: str, name: str = "doc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_data_is_what_safe_load_returns(tmp_path):
    path = write(tmp_path, SAMPLE)
    assert load_yaml(path).data == yaml.safe_load(SAMPLE)


def test_lines_of_keys_and_items(tmp_path):
    doc = load_yaml(write(tmp_path, SAMPLE))
    assert doc.lines[("a",)] == 1
    assert doc.lines[("b", "c")] == 3
    assert doc.lines[("b", "d", 1)] == 6
    assert doc.lines[("b", "d", 1, "y")] == 6
    assert doc.lines[("merged", "j")] == 11


def test_line_falls_back_to_nearest_ancestor(tmp_path):
    doc = load_yaml(write(tmp_path, SAMPLE))
    assert doc.line(("b", "d", 0, "missing")) == 5


def test_duplicate_key_is_an_issue(tmp_path):
    doc = load_yaml(write(tmp_path, "a: 1\nb: 2\na: 3\n"))
    assert doc.data == {"a": 3, "b": 2}
    (issue,) = doc.issues
    assert (issue.line, issue.key) == (3, "a")
    assert "first defined on line 1" in issue.message


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    (issue,) = err.value.issues
    assert issue.file == path
    assert issue.line == 3
    assert str(path) in str(err.value)


def test_unsafe_tags_are_refused(tmp_path):
    path = write(tmp_path, "a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(path)


def test_empty_file(tmp_path):
    doc = load_yaml(write(tmp_path, ""))
    assert doc.data is None
    assert doc.issues == ()


def test_format_key():
    assert format_key(("base", "bootstrap", "suite")) == "base.bootstrap.suite"
    assert format_key(("packages", 3)) == "packages[3]"
    assert format_key(()) == ""


def test_nested_aliases_are_refused_quickly(tmp_path):
    import time

    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 10):
        prev = chr(ord("a") + n - 1)
        name = chr(ord("a") + n)
        levels.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
                      f"*{prev}, *{prev}, *{prev}, *{prev}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_yaml(bomb)
    assert time.monotonic() - started < 5
    assert "bomb.yaml" in str(err.value) and "nested aliases" in str(err.value)


def test_an_oversized_file_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("k: " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(big)
    assert "larger than 1 MiB" in str(err.value)
