"""A seeded fuzzer over real shard parts: tampered marks, layouts and outputs, one merge a round.

Each round makes the parts of a sharded run (``shard_runs``), applies one to three
mutations (names in the shard mark that are paths, numbers past their bounds,
marks of the wrong shape; symlinked directories and files, FIFOs, devices in the
part; an output spelled to land elsewhere) and merges. Every round either merges
inside ``-o`` only or refuses (exit 2 on one line, or a MergeError); nothing outside
``-o`` changes (:class:`TreeWatch`), nothing from outside the parts gets in (the
outside tree is shaped like a part, so a followed link would bring its files), and a
round that planted what must be refused (a name that is a path, a number out of
bounds, a symlinked directory where merge reads, an odd output) is refused, not
merged around.

Odd rounds run ``dib-matrix merge`` on the files (the validating reader sees the
marks first); even rounds read the parts while valid and edit their marks in memory
before ``merge_parts``, so merge's own checks must hold without the reader.
``DIB_MATRIX_FUZZ_ROUNDS`` sets the rounds (``tests.hostile.fuzz_rounds``); a failing
round names its seed and mutations.
"""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reports.merge import MergeError, Part, merge_parts
from results.limits import MAX_SHARDS
from results.reader import read_results
from tests.hostile import Outcome, TreeWatch, fuzz_rounds
from tests.unit.test_hostile_merge import deadline, merge_cli
from tests.unit.test_merge import make_parts

SEED_BASE = 20_231  # seeds are SEED_BASE + round: a failure replays with its round number
CHILD_EVERY = 10  # every tenth round runs the command in a child process (the harness)
SECRET = "FUZZ-SECRET-OUTSIDE-THE-PARTS"
NAMES = ["..", ".", "", "/", "/etc", "../x", "../../secret", "../../../../../x", "a/b",
         "x/..", "nul\0", "new\nline", "Upper", "h" * 300, 7, None, True, ["l"], {"d": 1}]
NUMBERS = [0, -1, 1, 2, 3, 1000, 1001, 10**12, "1", 1.5, 2.0, True, None, [1], {}]


@dataclass
class Round:
    rng: random.Random
    root: Path
    parts: list[Path]
    out: Path
    done: list[str]
    in_memory: bool = False
    # (part number, edit of its shard mark): written to results.json, or made in memory
    mark_edits: list[tuple[int, Callable[[dict[str, Any]], str]]] = field(default_factory=list)
    must_refuse: list[str] = field(default_factory=list)  # what was planted that is refused

    def part(self) -> Path:
        return self.rng.choice(self.parts)

    def host_dirs(self, part: Path) -> list[Path]:
        return [d for tree in ("images", "logs") if (part / tree).is_dir()
                for d in sorted((part / tree).iterdir()) if d.is_dir() and not d.is_symlink()]


def _edit_mark(r: Round, change: Callable[[dict[str, Any]], str]) -> None:
    r.mark_edits.append((r.rng.randrange(len(r.parts)), change))


def write_mark_edits(r: Round) -> None:
    for number, change in r.mark_edits:
        path = r.parts[number] / "results.json"
        if path.is_symlink() or not path.is_file():
            continue
        document = json.loads(path.read_text())
        if isinstance(document.get("shard"), dict):  # else a mutation made it "{}"
            r.done.append(f"{r.parts[number].name}: {change(document['shard'])}")
            path.write_text(json.dumps(document))


def edit_marks_in_memory(r: Round, parts: list[Part]) -> None:
    for number, change in r.mark_edits:
        r.done.append(f"{parts[number].path.name} (in memory): {change(parts[number].mark)}")


def host_name(r: Round) -> None:
    name = r.rng.choice(NAMES)

    def change(mark: dict[str, Any]) -> str:
        hosts = mark.get("hosts") or ["nobody"]
        old = r.rng.choice(hosts) if isinstance(hosts, list) else "nobody"
        plan = mark.get("plan") if isinstance(mark.get("plan"), dict) else {}
        where = r.rng.choice(["hosts", "plan", "assignment", "cells", "all"])
        if where in ("hosts", "all") and isinstance(hosts, list):
            mark["hosts"] = [name if h == old else h for h in hosts]
        if where in ("plan", "all") and isinstance(plan.get("hosts"), list):
            plan["hosts"] = [name if h == old else h for h in plan["hosts"]]
        if where in ("assignment", "all") and isinstance(plan.get("assignment"), dict):
            plan["assignment"] = {(str(name) if h == old else h): i
                                  for h, i in plan["assignment"].items()}
        if where in ("cells", "all") and isinstance(plan.get("cells"), list):
            plan["cells"] = [[name, *c[1:]] if isinstance(c, list) and c and c[0] == old
                             else c for c in plan["cells"]]
        if old != "nobody":
            r.must_refuse.append(f"host {name!r}")
        return f"host {old} -> {name!r} in {where}"

    _edit_mark(r, change)


def shard_number(r: Round) -> None:
    key, value = r.rng.choice(["index", "count"]), r.rng.choice(NUMBERS)

    def change(mark: dict[str, Any]) -> str:
        mark[key] = value
        if type(value) is not int or not 1 <= value <= MAX_SHARDS:
            r.must_refuse.append(f"{key} {value!r}")
        return f"{key} = {value!r}"

    _edit_mark(r, change)


def mark_shape(r: Round) -> None:
    key = r.rng.choice(["kind", "hosts", "plan", "matrix_hash", "dib_tree_digest", "index"])
    value = r.rng.choice([None, "x", 5, [], {}, ["../x"], {"cells": "x"}])

    def change(mark: dict[str, Any]) -> str:
        r.must_refuse.append(f"mark {key}")  # every value here is wrong, or differs
        if r.rng.random() < 0.3:
            mark.pop(key, None)
            return f"del {key}"
        mark[key] = value
        return f"{key} = {value!r}"

    _edit_mark(r, change)


def planned_cell(r: Round) -> None:
    cell = r.rng.choice([["debian-trixie", "../../x", "check", True], "x", [1, 2, 3, 4],
                         ["../x", "tox", "check", True], ["debian-trixie", "tox", "nope", 1]])

    def change(mark: dict[str, Any]) -> str:
        plan = mark.get("plan")
        if isinstance(plan, dict) and isinstance(plan.get("cells"), list):
            plan["cells"].append(cell)
            r.must_refuse.append(f"planned cell {cell!r}")
        return f"planned cell {cell!r}"

    _edit_mark(r, change)


def _target(r: Round, part: Path) -> Path:
    return r.rng.choice([r.root / "secret", r.root / "secret" / "secret.txt", part / "logs",
                         r.root / "absent", Path("/etc"), part])


def _replace(path: Path) -> None:
    """Remove what is at ``path`` (a file, a link or a whole directory)."""
    if path.is_symlink() or path.is_file() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        for inner in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            inner.rmdir() if inner.is_dir() and not inner.is_symlink() else inner.unlink()
        path.rmdir()


def symlinked_directory(r: Round) -> None:
    part = r.part()
    places = [part / "images", part / "logs", *r.host_dirs(part)]
    place = r.rng.choice(places) if r.rng.random() < 0.7 else r.rng.choice(places) / "sub"
    if not place.parent.is_dir() or place.parent.is_symlink():
        return
    _replace(place)
    target = place if r.rng.random() < 0.1 else _target(r, part)  # a loop, at times
    place.symlink_to(target)
    r.done.append(f"symlink {place.relative_to(r.root)} -> {target}")
    if place.name != "sub" or target.is_dir():  # at "sub", a link to a file is a file
        r.must_refuse.append(f"symlinked directory {place.name}")


def special_file(r: Round) -> None:
    part = r.part()
    dirs = r.host_dirs(part)
    if not dirs:
        return
    place = r.rng.choice(dirs) / r.rng.choice(["x.log", "y.qcow2", "tox.log"])
    _replace(place)
    what = r.rng.choice(["symlink", "fifo", "device", "dangling", "loop"])
    if what == "symlink":
        place.symlink_to(r.root / "secret" / "secret.txt")
    elif what == "fifo":
        os.mkfifo(place)
    elif what == "device" and os.geteuid() == 0:
        os.mknod(place, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif what == "dangling":
        place.symlink_to(r.root / "absent")
    else:
        place.symlink_to(place)
    r.done.append(f"{what} at {place.relative_to(r.root)}")


def part_file(r: Round) -> None:
    part = r.part()
    place = part / r.rng.choice(["results.json", "run.log", "images", "logs"])
    moved = r.root / f"moved-{place.name}-{part.name}"
    if place.is_symlink() or not place.exists() or moved.exists():
        return
    place.rename(moved)
    what = r.rng.choice(["symlink", "fifo", "file"])
    if what == "symlink":
        place.symlink_to(moved)
    elif what == "fifo":
        os.mkfifo(place)
    else:
        place.write_text("a file where a directory was" if place.suffix != ".json" else "{}")
    r.done.append(f"{place.relative_to(r.root)} is a {what}")
    # run.log is skipped when odd; results.json, read before the edit in memory, too
    if place.name in ("images", "logs") or (place.name == "results.json" and not r.in_memory):
        r.must_refuse.append(f"{place.name} is a {what}")


def deep_tree(r: Round) -> None:
    dirs = r.host_dirs(r.part())
    if not dirs:
        return
    deep = r.rng.choice(dirs).joinpath(*["d"] * r.rng.randint(1, 40))
    deep.mkdir(parents=True)
    (deep / "deep.log").write_text("deep")
    r.done.append(f"deep tree {deep.relative_to(r.root)}")


def output_elsewhere(r: Round) -> None:
    busy = r.root / "busy"
    busy.mkdir(exist_ok=True)
    (busy / "keep").write_text("mine")
    r.out = r.rng.choice([Path(f"{busy}/absent/.."), busy / ".", busy, r.root / "out" / ".x",
                          r.root / "out" / "bad name"])
    r.done.append(f"-o {r.out}")
    r.must_refuse.append("output")


MUTATIONS = [host_name, shard_number, mark_shape, planned_cell, symlinked_directory,
             special_file, part_file, deep_tree]
OUTPUT_ODDS = 0.15  # an odd output is checked first and would hide the other mutations


def merge_in_memory(r: Round, parts: list[Part]) -> Outcome:
    """merge_parts on parts no reader checked: 0 merged, 2 refused by a MergeError."""
    try:
        with deadline():
            merge_parts(parts, r.out)
    except MergeError as err:
        return Outcome(2, "", f"dib-matrix: {err}\n")
    return Outcome(0, "", "")


def outside_like_a_part(root: Path, hosts: list[str]) -> None:
    """root/secret shaped like a part (and like images/ or logs/ of one), every file
    holding SECRET: a link followed into it would bring SECRET into the merged run."""
    secret = root / "secret"
    for base in (secret, secret / "images", secret / "logs"):
        for host in hosts:
            (base / host).mkdir(parents=True, exist_ok=True)
            (base / host / "tox.log").write_text(SECRET)
    (secret / "secret.txt").write_text(SECRET)
    (secret / "run.log").write_text(SECRET)


def assert_only_parts_content(out: Path, what: str) -> None:
    """No symlink made, no byte from outside the parts, in the merged run."""
    for folder, dirs, files in os.walk(out):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            assert not path.is_symlink(), f"{what}: symlink in the merged run: {path}"
            if name in files:
                assert stat.S_ISREG(path.lstat().st_mode), f"{what}: special file {path}"
                assert SECRET.encode() not in path.read_bytes(), f"{what}: {path}"


@pytest.mark.parametrize("round_number", range(fuzz_rounds()))
def test_a_tampered_merge_stays_inside_its_output(tmp_path, round_number):
    rng = random.Random(SEED_BASE + round_number)
    (tmp_path / "out").mkdir()
    parts = make_parts(tmp_path, count=rng.choice([2, 3]))
    outside_like_a_part(tmp_path, read_results(parts[0]).shard["plan"]["hosts"])
    in_memory = round_number % 2 == 0
    r = Round(rng, tmp_path, parts, tmp_path / "out" / "merged", [], in_memory)
    read = [Part(part, read_results(part)) for part in parts] if in_memory else []
    for mutation in rng.sample(MUTATIONS, rng.randint(1, 3)):
        mutation(r)
    if rng.random() < OUTPUT_ODDS:
        output_elsewhere(r)
    if in_memory:
        edit_marks_in_memory(r, read)
    else:
        write_mark_edits(r)
    what = f"round {round_number}: {'; '.join(r.done) or 'no change'}"
    watch = TreeWatch(tmp_path, r.out)
    if in_memory:
        outcome = merge_in_memory(r, read)
    else:
        outcome = merge_cli(r.parts, r.out, child=round_number % CHILD_EVERY == 1)
    assert outcome.code in (0, 1, 2), f"{what}: {outcome.output[-2000:]}"
    watch.assert_untouched()
    merged = outcome.code != 2 or "shards missing" in outcome.stderr
    assert not (merged and r.must_refuse), f"{what}: merged around {r.must_refuse}"
    if merged:
        assert read_results(r.out).shard["kind"] == "merged", what
        assert_only_parts_content(r.out, what)
    else:
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dib-matrix: "), f"{what}: {lines}"
        assert not (r.out / "results.json").exists() or r.out.name == "busy", what
