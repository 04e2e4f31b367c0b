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

from matrix.config.diagnostics import ConfigError
from matrix.config.hosts import BUNDLED_HOSTS_DIR, load_host
from matrix.config.matrixfile import BUNDLED_MATRICES_DIR, load_matrix
from matrix.config.targets import BUNDLED_TARGETS_DIR, load_target
from matrix.verdict.catalogue import bundled_catalogue, load_catalogue

ROUNDS = 60
VALUES = ["", "~", "[]", "{}", "-1", "0", ".inf", ".nan", "yes", "'{0}'", "'{p:>999999999}'",
          "[a, [b, {c: d}]]", "!!binary aGk=", "&x [1]", "*x", "'(a)\\1'", "\"\\x00\"",
          "12345678901234567890", "'*'", "'/etc/passwd'", "{host: '*'}"]


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
