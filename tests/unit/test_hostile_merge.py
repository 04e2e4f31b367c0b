"""``dib-matrix merge`` on tampered parts, through the real command line.

Each class of hostile part or output: names in a shard mark that are paths,
symlinked directories in a part, special files in a part, shard numbers and part
counts past their bounds, an output that is not what it says. Every case: exit 2
with one clear line (or, for a skipped special file, the merge with a warning),
no traceback, no hang, and nothing outside ``-o`` touched (:class:`TreeWatch`).
The last tests bypass the reader (Part objects made in memory): the path check
at merge holds on its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matrix.cli import main
from reports.merge import MergeError, Part, merge, merge_parts, survey
from reports.partfiles import Placement, place
from results.limits import MAX_PARTS, MAX_SHARDS
from results.reader import read_results
from tests.hostile import CASE_TIMEOUT, Outcome, TreeWatch, run_cli
from tests.unit.test_merge import make_parts

SECRET = "SECRET-OUTSIDE-THE-PARTS"
MOVED = "debian-trixie"  # the one host of part 2 (shard 2 of 2): the one tampered with
# Where a traversal through logs/<host> of part2 lands: tmp_path/victim, and through
# the merged run's logs/<host>: tmp_path/out/victim (what the old merge wrote).
TRAVERSAL = "../../victim"


@pytest.fixture
def parts(tmp_path) -> list[Path]:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text(SECRET)
    (tmp_path / "out").mkdir()
    return make_parts(tmp_path)


def edit_marks(parts: list[Path], edit: Callable[[dict[str, Any], int], Any]) -> None:
    """Apply ``edit(mark, part_number)`` to every part's shard mark in results.json."""
    for number, part in enumerate(parts, 1):
        path = part / "results.json"
        document = json.loads(path.read_text())
        edit(document["shard"], number)
        path.write_text(json.dumps(document))


def rename(mark: dict[str, Any], old: str, new: Any, places: set[str]) -> None:
    """``old`` becomes ``new`` in the chosen places of a mark."""
    plan = mark["plan"]
    if "hosts" in places:
        mark["hosts"] = [new if h == old else h for h in mark["hosts"]]
    if "plan" in places:
        plan["hosts"] = [new if h == old else h for h in plan["hosts"]]
    if "assignment" in places and not isinstance(new, list):  # a key is never a list
        plan["assignment"] = {(new if h == old else h): i
                              for h, i in plan["assignment"].items()}
    if "cells" in places:
        plan["cells"] = [[new if c[0] == old else c[0], *c[1:]] for c in plan["cells"]]


EVERYWHERE = {"hosts", "plan", "assignment", "cells"}


@contextlib.contextmanager
def deadline(seconds: float = CASE_TIMEOUT) -> Iterator[None]:
    """In this process what run_cli's timeout is for a child: a hang fails the test."""
    def expire(_signum: int, _frame: object) -> None:
        raise AssertionError(f"no answer in {seconds:.0f} s (hangs on hostile input)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def merge_cli(parts: list[Path], out: Path, child: bool = True) -> Outcome:
    """``dib-matrix merge PARTS -o OUT`` in a child process (the harness), or in this one
    for the wide tables (the same code from ``main`` on; a traceback fails the test)."""
    if child:
        return run_cli("merge", *parts, "-o", out)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), deadline():
        code = main(["merge", *map(str, parts), "-o", str(out)])
    return Outcome(code, stdout.getvalue(), stderr.getvalue())


def assert_refused(outcome: Outcome, *words: str) -> None:
    assert outcome.code == 2, outcome.output
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dib-matrix: "), outcome.stderr
    for word in words:
        assert word in lines[0], lines[0]


def assert_nothing_of_the_secret(out: Path) -> None:
    if not out.exists():
        return
    for path in out.rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


# -- names in a shard mark are never paths ----------------------------------------------
# Each case twice: against merge's own checks on parts read while valid and edited in
# memory (no reader saw the edit: the check at merge holds alone), and through the
# command line (where the reader may refuse first: any one-line refusal will do).

HOSTILE_HOSTS = [TRAVERSAL, "../../../../x", "/etc", "a/b", "..", ".", "", "x\n", "nul\0",
                 7, None, ["h"], "Upper", "h" * 200]


def _in_memory(parts: list[Path], edit: Callable[[dict[str, Any], int], Any]) -> list[Part]:
    read = [Part(part, read_results(part)) for part in parts]
    for number, part in enumerate(read, 1):
        edit(part.mark, number)
    return read


def assert_merge_refuses(tmp_path: Path, parts: list[Path],
                         edit: Callable[[dict[str, Any], int], Any], *words: str,
                         child: bool = False) -> None:
    out = tmp_path / "out" / "merged"
    watch = TreeWatch(tmp_path, out)
    with pytest.raises(MergeError) as refused, deadline():
        merge_parts(_in_memory(parts, edit), out)
    message = str(refused.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    watch.assert_untouched()
    edit_marks(parts, edit)
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli(parts, out, child))
    watch.assert_untouched()
    assert not out.exists()


@pytest.mark.parametrize("name", HOSTILE_HOSTS, ids=lambda n: repr(n)[:20])
def test_a_host_named_like_a_path_is_refused(tmp_path, parts, name):
    assert_merge_refuses(tmp_path, parts, lambda mark, _: rename(mark, MOVED, name, EVERYWHERE),
                         "not a name", child=name == TRAVERSAL)


@pytest.mark.parametrize("places", [{"hosts", "plan"}, {"plan"}, {"assignment"}, {"cells"},
                                    {"hosts"}], ids=lambda p: "+".join(sorted(p)))
def test_a_path_in_any_place_of_the_mark_is_refused(tmp_path, parts, places):
    assert_merge_refuses(tmp_path, parts,
                         lambda mark, _: rename(mark, MOVED, TRAVERSAL, places),
                         child=places == {"hosts"})


def test_a_row_named_like_a_path_is_refused(tmp_path, parts):
    def edit(mark: dict[str, Any], _: int) -> None:
        mark["plan"]["rows"] = ["../../x" if r == "tox" else r for r in mark["plan"]["rows"]]
        mark["plan"]["cells"] = [[c[0], "../../x" if c[1] == "tox" else c[1], *c[2:]]
                                 for c in mark["plan"]["cells"]]

    assert_merge_refuses(tmp_path, parts, edit, "plan rows", "'../../x'", child=True)


@pytest.mark.parametrize(("key", "value"), [
    ("plan", "not a plan"), ("plan", None), ("hosts", "debian-trixie"), ("hosts", []),
    ("matrix_hash", None), ("dib_tree_digest", 5), ("kind", "merged"),
])
def test_a_mark_of_the_wrong_shape_is_refused(tmp_path, parts, key, value):
    assert_merge_refuses(tmp_path, parts, lambda mark, _: mark.__setitem__(key, value),
                         child=value is None)


@pytest.mark.parametrize("cell", [["debian-trixie", "tox"], "cell", [1, 2, 3, 4],
                                  ["debian-trixie", "tox", "nonsense", True],
                                  ["debian-trixie", "tox", "check", "yes"],
                                  ["debian-trixie", "../x", "check", True],
                                  [["unhashable"], "tox", "check", True]], ids=repr)
def test_a_planned_cell_of_the_wrong_shape_is_refused(tmp_path, parts, cell):
    assert_merge_refuses(tmp_path, parts, lambda mark, _: mark["plan"]["cells"].append(cell),
                         "planned cell", child=cell == "cell")


def test_parts_whose_plans_differ_are_refused(tmp_path, parts):
    def edit(mark: dict[str, Any], number: int) -> None:
        if number == 2:  # the same hash claimed, one more cell: merge would list it
            mark["plan"]["cells"].append([MOVED, "tox", "boot", False])

    assert_merge_refuses(tmp_path, parts, edit, "its plan is not the plan", child=True)


# -- shard numbers and part counts are bounded ------------------------------------------


@pytest.mark.parametrize(("index", "count"), [
    (None, MAX_SHARDS + 1), (None, 10**12), (None, 0), (None, -2), (None, "2"), (None, 2.0),
    (None, True), (0, None), (3, None), ("1", None), (-1, None), (1.0, None), ([1], None),
])
def test_shard_numbers_out_of_bounds_are_refused(tmp_path, parts, index, count):
    def edit(mark: dict[str, Any], number: int) -> None:
        if count is not None:
            mark["count"] = count  # in every part: they agree, and still must be refused
        if index is not None and number == 1:
            mark["index"] = index

    assert_merge_refuses(tmp_path, parts, edit, "must be a whole number from 1 to",
                         child=count == MAX_SHARDS + 1)


def test_a_huge_shard_count_costs_nothing(tmp_path, parts):
    """A count of 10**12 in every part once made merge list 10**12 missing shards."""
    edit_marks(parts, lambda mark, _: mark.__setitem__("count", 10**12))
    assert_refused(merge_cli(parts, tmp_path / "out" / "merged"))  # under the CLI timeout


def test_more_parts_than_the_cap_are_refused_before_any_is_read(tmp_path, parts):
    out = tmp_path / "out" / "merged"
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli([parts[0]] * (MAX_PARTS + 1), out), f"at most {MAX_PARTS}")
    with pytest.raises(MergeError, match=f"at most {MAX_PARTS}"):
        merge([tmp_path / f"absent{i}" for i in range(MAX_PARTS + 1)], out)
    watch.assert_untouched()


# -- symlinks in a part are never followed ------------------------------------------------


SYMLINKED_DIRS = ["images", "logs", f"images/{MOVED}", f"logs/{MOVED}",
                  f"images/{MOVED}/sub", f"logs/{MOVED}/deep/er", "images/stray",
                  "logs/stray"]


@pytest.mark.parametrize("where", SYMLINKED_DIRS)
def test_a_symlinked_directory_in_a_part_is_refused_and_named(tmp_path, parts, where):
    out = tmp_path / "out" / "merged"
    link = parts[1] / where
    if link.exists():
        for path in sorted(link.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        link.rmdir()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tmp_path / "victim", target_is_directory=True)
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli(parts, out, child=where in ("images", f"logs/{MOVED}")), where,
                   "symlinked directory")
    watch.assert_untouched()
    assert not out.exists()  # refused before anything was written


def test_a_symlinked_directory_pointing_inside_the_part_is_refused_too(tmp_path, parts):
    out = tmp_path / "out" / "merged"
    host_images = parts[1] / "images" / MOVED
    for path in host_images.iterdir():
        path.unlink()
    host_images.rmdir()
    host_images.symlink_to(parts[1] / "logs" / MOVED)
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli(parts, out), f"images/{MOVED}", "symlinked directory")
    watch.assert_untouched()


@pytest.mark.parametrize("name", ["results.json"])
def test_a_parts_results_file_that_is_not_a_regular_file_is_refused(tmp_path, parts, name):
    out = tmp_path / "out" / "merged"
    moved = tmp_path / "elsewhere.json"
    (parts[1] / name).rename(moved)
    (parts[1] / name).symlink_to(moved)
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli(parts, out), "a symlink")
    watch.assert_untouched()
    (parts[1] / name).unlink()
    os.mkfifo(parts[1] / name)  # a FIFO must not hang the merge
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli(parts, out), "a FIFO")
    watch.assert_untouched()


def test_symlink_loops_are_refused_not_crashed_on(tmp_path, parts):
    out = tmp_path / "out" / "merged"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    logs = parts[1] / "logs" / MOVED
    for path in logs.iterdir():
        path.unlink()
    logs.rmdir()
    logs.symlink_to(logs)
    watch = TreeWatch(tmp_path, out)
    assert_refused(merge_cli([parts[0], loop], out), "symlink loop")
    assert_refused(merge_cli(parts, out, child=False), f"logs/{MOVED}", "symlinked directory")
    watch.assert_untouched()


def test_the_part_directory_itself_may_be_a_symlink(tmp_path, parts):
    out = tmp_path / "out" / "merged"
    link = tmp_path / "part2-link"
    link.symlink_to(parts[1])
    outcome = merge_cli([parts[0], link], out)
    assert outcome.code == 1, outcome.output  # the gate: a voting cell failed
    assert (out / "logs" / MOVED / "tox.log").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_symlinked_and_special_files_are_skipped_with_a_warning(tmp_path, parts):
    """Chosen: skipped (never followed, never opened) and named on one warning line;
    the merge and its gate go on (one odd file does not block the release gate)."""
    clean = merge_cli(parts, tmp_path / "out" / "clean").code
    out = tmp_path / "out" / "merged"
    logs, images = parts[1] / "logs" / MOVED, parts[1] / "images" / MOVED
    (logs / "evil.log").symlink_to(tmp_path / "victim" / "f")
    (logs / "dangling.log").symlink_to(tmp_path / "absent")
    (logs / "loop.log").symlink_to(logs / "loop.log")
    os.mkfifo(images / "pipe.qcow2")
    os.mknod(images / "null.raw", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (parts[1] / "run.log").unlink()
    (parts[1] / "run.log").symlink_to(tmp_path / "victim" / "f")
    watch = TreeWatch(tmp_path, out)
    outcome = merge_cli(parts, out)
    assert outcome.code == clean, outcome.output
    warning = [line for line in outcome.stderr.splitlines() if "skipped" in line]
    assert len(warning) == 1 and "skipped 6 entries" in warning[0], outcome.stderr
    for name in ("evil.log", "pipe.qcow2", "a FIFO", "a character device", "a symlink"):
        assert name in outcome.stderr
    watch.assert_untouched()
    assert_nothing_of_the_secret(out)
    assert not (out / "parts" / "shard-2-of-2" / "run.log").exists()
    assert (out / "logs" / MOVED / "tox.log").is_file()


# -- the output is what it says -----------------------------------------------------------


SPELLINGS = ["busy/absent/..", "busy/.", "busy/absent/../", "busy/a/b/../../."]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_an_output_spelled_with_dots_is_checked_as_what_it_names(tmp_path, parts, spelling):
    busy = tmp_path / "out" / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    watch = TreeWatch(tmp_path)
    outcome = merge_cli(parts, Path(f"{tmp_path / 'out'}/{spelling}"),
                        child=spelling == SPELLINGS[0])
    assert_refused(outcome, str(busy), "exists and is not an empty directory")
    watch.assert_untouched()
    assert sorted(p.name for p in busy.iterdir()) == ["keep"]


@pytest.mark.parametrize("name", [".hidden", "bad name", "-dash", "run\nid"], ids=repr)
def test_an_output_whose_name_is_not_a_run_id_is_refused(tmp_path, parts, name):
    watch = TreeWatch(tmp_path)
    assert_refused(merge_cli(parts, tmp_path / "out" / name, child=name == "run\nid"),
                   "is not a run id")
    watch.assert_untouched()


def test_an_output_that_is_a_symlink_is_refused(tmp_path, parts):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    link = tmp_path / "out" / "merged"
    link.symlink_to(empty)
    watch = TreeWatch(tmp_path)
    assert_refused(merge_cli(parts, link), "is a symlink")
    watch.assert_untouched()
    assert not any(empty.iterdir())


def test_a_dot_dot_output_normalised_into_a_new_directory_is_merged_there(tmp_path, parts):
    out = tmp_path / "out" / "merged"
    watch = TreeWatch(tmp_path, out)
    outcome = run_cli("merge", *parts, "-o", f"{out}/absent/..")
    assert outcome.code == 1, outcome.output
    assert read_results(out).run_id == "merged"
    assert not (out / "absent").exists()
    watch.assert_untouched()


# -- the path check at merge holds without the reader -----------------------------------


def _part_with_hosts(part: Path, hosts: list[Any]) -> Part:
    results = read_results(part)
    results.shard["hosts"] = hosts  # in memory: no reader, no check_mark
    return Part(part, results)


@pytest.mark.parametrize("host", [TRAVERSAL, "/etc", "a/b", "..", "", 7], ids=repr)
def test_survey_refuses_a_host_that_is_a_path_without_any_reader(tmp_path, parts, host):
    watch = TreeWatch(tmp_path)
    with pytest.raises(MergeError, match="refused"):
        survey(_part_with_hosts(parts[1], [host]), 2)
    with pytest.raises(MergeError):
        merge_parts([Part(parts[0], read_results(parts[0])), _part_with_hosts(parts[1], [host])],
                    tmp_path / "out" / "merged")
    watch.assert_untouched()


def test_place_refuses_a_destination_that_leaves_the_output(tmp_path, parts):
    out = tmp_path / "out" / "merged"
    out.mkdir()
    watch = TreeWatch(tmp_path, out)
    source = parts[1] / "run.log"
    for dest in [("..", "escaped"), ("logs", "..", "..", "escaped"), ("/abs",), ("a/b",)]:
        with pytest.raises(MergeError, match="refused"):
            place([Placement(source, dest, link=False)], out)
    (out / "logs").symlink_to(tmp_path / "victim")
    with pytest.raises(MergeError, match="leads outside"):
        place([Placement(source, ("logs", "x"), link=False)], out)
    watch.assert_untouched()
