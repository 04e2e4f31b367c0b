"""Hostile configuration: mutated copies of the bundled files never crash a loader.

A seeded mutator (so a failure replays) damages the bundled matrix, host, target
and category files in the ways hand-edited YAML goes wrong: lines dropped,
duplicated or swapped, characters cut, values replaced by other YAML types,
anchors and aliases added. Every loader must either load the file or raise a
ConfigError (file, line, key), quickly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from matrix.config import matrixfile
from matrix.config.diagnostics import ConfigError
from matrix.config.hosts import BUNDLED_HOSTS_DIR, HOST_KEYS, load_host
from matrix.config.matrixfile import BUNDLED_MATRICES_DIR, MATRIX_KEYS, load_matrix
from matrix.config.schema import Invalid
from matrix.config.targets import BUNDLED_TARGETS_DIR, TARGET_KEYS, load_target
from matrix.verdict import catalogue
from matrix.verdict.catalogue import CATEGORY_KEYS, bundled_catalogue, load_catalogue

ROUNDS = 60
VALUES = ["", "~", "[]", "{}", "-1", "0", ".inf", ".nan", "yes", "'{0}'", "'{p:>999999999}'",
          "[a, [b, {c: d}]]", "!!binary aGk=", "&x [1]", "*x", "'(a)\\1'", "\"\\x00\"",
          "12345678901234567890", "'*'", "'/etc/passwd'", "{host: '*'}", "'false'",
          "'x\\n'", "[" * 80 + "]" * 80, "&r [*r]", "\"\\x1b[2J\"", "[[a]]"]


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines() or [""]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        action = rng.randrange(6)
        if action == 0 and len(lines) > 1:
            del lines[i]
        elif action == 1:
            lines.insert(i, lines[i])
        elif action == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif action == 3:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut]
        elif action == 4 and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(VALUES)}"
        else:
            lines.insert(i, f"{rng.choice(['x', 'name', 'id', 'env'])}: {rng.choice(VALUES)}")
    return "\n".join(lines) + "\n"


def _sources() -> list[tuple[str, Path, Callable[[Path], object]]]:
    return [
        ("matrix", BUNDLED_MATRICES_DIR / "nightly.yaml", load_matrix),
        ("host", BUNDLED_HOSTS_DIR / "debian-bookworm.yaml", load_host),
        ("target", BUNDLED_TARGETS_DIR / "debian-bookworm-vm.yaml", load_target),
        ("category", bundled_catalogue(), lambda p: load_catalogue([p])),
    ]


@pytest.mark.parametrize("kind,source,loader", _sources(), ids=lambda v: str(v)[:20])
def test_mutated_files_load_or_fail_with_a_config_error(kind, source, loader, tmp_path):
    rng = random.Random(f"dib-matrix-{kind}")
    text = source.read_text()
    path = tmp_path / source.name
    for round_number in range(ROUNDS):
        path.write_text(_mutate(text, rng))
        started = time.monotonic()
        try:
            loader(path)
        except ConfigError as err:
            assert err.issues, f"round {round_number}: an empty ConfigError"
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{kind} round {round_number}: {type(err).__name__}: {err}\n"
                        f"{path.read_text()}")
        assert time.monotonic() - started < 5, f"{kind} round {round_number} took too long"


# ---- every key of every file kind, given every shape of value ----------------------------

HOSTILE_VALUES = [
    "'false'", "'no'", "0", "1", "-1", "10000000000000000000000", ".nan", "-.inf", "~", "''",
    "'x\\n'", "\"a\\x00b\\x1b[2J\"", "'*'", "'['", "'../../etc/passwd'", "[]", "{}",
    "[[a]]", "[{a: b}]", "[1, 2]", "{a: [b]}", "{'': ''}", "[" * 60 + "]" * 60, "&s [*s]",
    "'{x:>9999999999}'", "!!binary aGk=", "2024-01-01", "'" + "x" * 5000 + "'",
]
BASES = {
    "matrix": ("m.yaml", "hosts: [debian-bookworm]\ntargets: [debian-bookworm]\nchecks: []\n",
               MATRIX_KEYS, load_matrix),
    "host": ("h.yaml", "name: h\nbase: {bootstrap: sid}\n", HOST_KEYS, load_host),
    "target": ("t.yaml", "name: t\nelements: [debian-minimal]\n", TARGET_KEYS, load_target),
    "category": ("c.yaml", "- id: x\n  patterns: [x]\n", CATEGORY_KEYS,
                 lambda p: load_catalogue([p])),
}
# Keys inside entries: each gets the hostile values in place of its own.
NESTED = {
    "matrix": [("exclude: [{host: '*', target: '*', reason: r, NESTED: VALUE}]",
                ["host", "target", "reason"]),
               ("allowed-failures: [{host: '*', NESTED: VALUE}]", ["host", "target"]),
               ("include: [{host: debian-bookworm, target: debian-sid, NESTED: VALUE}]",
                ["host", "target", "env"])],
    "host": [("base: {bootstrap: {suite: sid, NESTED: VALUE}}",
              ["suite", "variant", "mirror", "tool", "components"]),
             ("environment: {NESTED: VALUE}", ["NAME"])],
    "target": [("requires: {NESTED: VALUE}", ["tools", "debootstrap-script"])],
    "category": [],
}


def _documents(kind: str) -> list[str]:
    name, base, keys, _ = BASES[kind]
    indent = "  " if kind == "category" else ""
    documents = []
    for key in keys:
        kept = "".join(line + "\n" for line in base.splitlines()
                       if not line.strip().lstrip("- ").startswith(f"{key.name}:"))
        for value in HOSTILE_VALUES:
            documents.append(f"{kept}{indent}{key.name}: {value}\n")
    for template, sub_keys in NESTED[kind]:
        for sub in sub_keys:
            for value in HOSTILE_VALUES:
                line = template.replace("NESTED", sub).replace("VALUE", value)
                documents.append(f"{base}{indent}{line}\n")
    return documents


@pytest.mark.parametrize("kind", list(BASES))
def test_every_key_takes_every_hostile_value_or_refuses_it_cleanly(kind, tmp_path,
                                                                   monkeypatch):
    name, _, _, loader = BASES[kind]
    path = tmp_path / name
    # The bundled hosts and targets a matrix names, read once (not for each document);
    # a one-entry catalogue before the category file (not the whole bundled one).
    hosts, targets = matrixfile.load_hosts(), matrixfile.load_targets()
    monkeypatch.setattr(matrixfile, "load_hosts", lambda *dirs: hosts)
    monkeypatch.setattr(matrixfile, "load_targets", lambda *dirs: targets)
    first = tmp_path / "bundled.yaml"
    first.write_text("- id: bundled\n  patterns: [y]\n")
    monkeypatch.setattr(catalogue, "bundled_catalogue", lambda: first)
    for document in _documents(kind):
        path.write_text(document)
        started = time.monotonic()
        try:
            loader(path)
        except ConfigError as err:
            assert err.issues, document
            # Keys and values from the file never reach a terminal raw.
            assert all(line.isprintable() for line in str(err).splitlines()), repr(str(err))
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{kind}: {type(err).__name__}: {err}\n{document[:500]}")
        assert time.monotonic() - started < 5, document[:500]


BOOLEAN_KEYS = [(kind, key) for kind, (_, _, keys, _) in BASES.items() for key in keys
                if isinstance(key.default, bool)]


@pytest.mark.parametrize("kind, key", BOOLEAN_KEYS, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("value", ["false", "true", "no", "yes", "0", "1", 0, 1, None, []])
def test_a_boolean_key_takes_only_a_yaml_boolean(kind, key, value):
    with pytest.raises(Invalid):
        key.parse(value, None, (key.name,))
    assert key.parse(False, None, (key.name,)) is False


# A list key written as one string would become a list of its letters (or one entry
# nobody meant); these take a bare string on purpose, and say so in their help.
ONE_OR_MANY = {("matrix", "categories"), ("category", "hosts"), ("category", "targets"),
               ("category", "record")}
LIST_KEYS = [(kind, key) for kind, (_, _, keys, _) in BASES.items() for key in keys
             if isinstance(key.default, list) or key.name in ("hosts", "targets", "elements")]


@pytest.mark.parametrize("kind, key", LIST_KEYS, ids=lambda v: getattr(v, "name", v))
def test_a_list_key_refuses_a_bare_string_unless_it_takes_one_on_purpose(kind, key, tmp_path):
    name, base, _, loader = BASES[kind]
    indent = "  " if kind == "category" else ""
    kept = "".join(line + "\n" for line in base.splitlines()
                   if not line.strip().lstrip("- ").startswith(f"{key.name}:"))
    path = tmp_path / name
    path.write_text(f"{kept}{indent}{key.name}: debian-bookworm\n")
    if (kind, key.name) in ONE_OR_MANY:
        return
    with pytest.raises(ConfigError, match=key.name):
        loader(path)
