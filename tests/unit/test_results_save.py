"""results.store.save: cells keep their JSON text between saves, and it never goes stale.

Every save must still write the whole document, exactly what
``json.dumps(results.to_json(), indent=2, sort_keys=True)`` gives, atomically.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from reports.jsonreport import load_schema
from results import store
from results.model import Artifact, Category, Cell, CellKind, RunResults, State
from results.reader import read_results
from tests.resultfactory import ALL_STATES


def reference(run: RunResults) -> str:
    """results.json as save wrote it before cells kept their text."""
    return json.dumps(run.to_json(), indent=2, sort_keys=True) + "\n"


def sample() -> RunResults:
    run = RunResults("r1", "m.yaml", ["h1", "h2"], ["hostgen", "tox", "t", "u"],
                     started="2026-01-01T00:00:00+00:00",
                     dib_tree={"path": "/src/dib", "commit": "abc"},
                     engine={"version": "26.1", "package_cache": {"hits": 3}},
                     options={"max_parallel": 4})
    run.cells = [
        Cell("h1", "hostgen", CellKind.HOSTGEN, State.SUCCESS, attempts=1),
        Cell("h1", "tox", CellKind.CHECK, State.FAILED,
             Category("runuser-missing", "runuser not available", "https://x/1",
                      ["runuser-missing"]),
             evidence="runuser: not found", attempts=1),
        Cell("h1", "t", CellKind.BUILD, State.SUCCESS, attempts=2,
             artifacts=[Artifact("images/h1/t.qcow2", "qcow2", 10, "ab" * 32)]),
        Cell("h1", "u", CellKind.BUILD, State.TIMEOUT,
             Category("uncategorized", "uncategorized", labels=[]), evidence="tail é ☃"),
        Cell("h2", "hostgen", CellKind.HOSTGEN),
        Cell("h2", "t", CellKind.BUILD, State.ALLOWED_FAILURE,
             Category("zypper-missing", "zypper not available"), voting=False),
    ]
    return run


def saved_text(run: RunResults, tmp_path) -> str:
    store.save(run, tmp_path)
    return (tmp_path / "results.json").read_text(encoding="utf-8")


def check(run: RunResults, tmp_path) -> None:
    """The file is what to_json gives, and reads back as the same results."""
    assert saved_text(run, tmp_path) == reference(run)
    assert read_results(tmp_path) == run


MUTATIONS: dict[str, Callable[[RunResults], None]] = {
    "state": lambda r: setattr(r.cells[4], "state", State.SKIPPED),
    "finished": lambda r: setattr(r.cells[0], "finished", "2026-01-01T00:01:00+00:00"),
    "category legend": lambda r: setattr(r.cells[1].category, "legend", "other legend"),
    "category id": lambda r: setattr(r.cells[3].category, "id", "timeout"),
    "category link": lambda r: setattr(r.cells[5].category, "link", "https://x/2"),
    "category labels append": lambda r: r.cells[1].category.labels.append("second"),
    "category labels item": lambda r: r.cells[1].category.labels.__setitem__(0, "renamed"),
    "category dropped": lambda r: setattr(r.cells[1], "category", None),
    "category added": lambda r: setattr(r.cells[0], "category", Category("x", "X")),
    "category replaced by equal": lambda r: setattr(
        r.cells[1], "category", copy.deepcopy(r.cells[1].category)),
    "artifacts append": lambda r: r.cells[2].artifacts.append(
        Artifact("images/h1/t.raw", "raw", 20, "cd" * 32)),
    "artifacts to a pending cell": lambda r: r.cells[4].artifacts.append(
        Artifact("images/h2/hostgen.tar", "tar", 1, "ef" * 32)),
    "artifact size": lambda r: setattr(r.cells[2].artifacts[0], "size", 11),
    "artifact sha256": lambda r: setattr(r.cells[2].artifacts[0], "sha256", "00" * 32),
    "artifacts cleared": lambda r: r.cells[2].artifacts.clear(),
    "artifacts replaced": lambda r: setattr(r.cells[2], "artifacts", []),
    "cell appended": lambda r: r.cells.append(Cell("h2", "u", CellKind.BUILD)),
    "cell removed": lambda r: r.cells.pop(2),
    "cells reordered": lambda r: r.cells.reverse(),
    "cells replaced": lambda r: setattr(r, "cells", [Cell("h9", "t", CellKind.BUILD)]),
    "no cells": lambda r: r.cells.clear(),
    "engine dict in place": lambda r: r.engine["package_cache"].update(hits=4),
    "interrupted": lambda r: setattr(r, "interrupted", True),
    "finished run": lambda r: setattr(r, "finished", "2026-01-01T01:00:00+00:00"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_save_after_a_change_shows_it(tmp_path, name):
    run = sample()
    check(run, tmp_path)
    before = saved_text(run, tmp_path)
    MUTATIONS[name](run)
    check(run, tmp_path)
    if name != "category replaced by equal":
        assert saved_text(run, tmp_path) != before


def test_many_changes_in_a_row_never_go_stale(tmp_path):
    run = sample()
    for name, mutate in MUTATIONS.items():
        if name in ("cells replaced", "no cells"):
            continue
        mutate(run)
        assert saved_text(run, tmp_path) == reference(run), name


def test_the_fixture_run_is_written_as_before(tmp_path, all_states):
    run = all_states
    text = saved_text(run, tmp_path)
    assert text == reference(run)
    assert text == (ALL_STATES / "results.json").read_text(encoding="utf-8")


def test_round_trip_through_load(tmp_path):
    run = sample()
    store.save(run, tmp_path)
    back = read_results(tmp_path)
    assert back == run
    assert back.to_json() == run.to_json()
    # A loaded run saves to the same text (its cells have no saved text yet).
    assert saved_text(back, tmp_path / "again") == reference(run)


def test_load_reads_indented_and_compact_files(tmp_path):
    run = sample()
    (tmp_path / "compact").mkdir()
    (tmp_path / "compact/results.json").write_text(json.dumps(run.to_json()))
    (tmp_path / "lines").mkdir()
    document = run.to_json()
    cells = ",\n".join(json.dumps(c, sort_keys=True) for c in document.pop("cells"))
    head = json.dumps(document, sort_keys=True)
    (tmp_path / "lines/results.json").write_text(f'{{"cells": [\n{cells}\n], {head[1:]}\n')
    store.save(run, tmp_path / "indented")
    for name in ("compact", "lines", "indented"):
        assert read_results(tmp_path / name) == run, name


def test_output_validates_against_the_schema(tmp_path):
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    run = sample()
    for mutate in (lambda r: None, MUTATIONS["artifacts append"], MUTATIONS["interrupted"]):
        mutate(run)
        data = json.loads(saved_text(run, tmp_path))
        assert [e.message for e in validator.iter_errors(data)] == []


def test_counts_and_classification_rate_follow_changes(tmp_path):
    run = sample()
    data = json.loads(saved_text(run, tmp_path))
    assert data["counts"] == run.counts()
    assert data["classification_rate"] == run.classification_rate() == 2 / 3
    run.cells[3].category.id = "timeout"  # the uncategorized one gets a name in place
    data = json.loads(saved_text(run, tmp_path))
    assert data["classification_rate"] == 1.0
    run.cells[1].state = State.SUCCESS
    run.cells[3].state = State.SUCCESS
    run.cells[5].state = State.SUCCESS
    data = json.loads(saved_text(run, tmp_path))
    assert data["counts"] == {"pending": 1, "success": 5}
    assert data["classification_rate"] is None


def count_serializations(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = Cell.to_json

    def counting(self):
        calls.append(self.id)
        return original(self)

    monkeypatch.setattr(Cell, "to_json", counting)
    return calls


def test_only_changed_cells_are_serialized_again(tmp_path, monkeypatch):
    run = sample()
    calls = count_serializations(monkeypatch)
    store.save(run, tmp_path)
    assert len(calls) == len(run.cells)
    calls.clear()
    store.save(run, tmp_path)
    assert calls == []
    run.cells[4].state = State.SUCCESS
    run.cells[1].category.legend = "changed"
    run.cells[2].artifacts[0].size = 12
    store.save(run, tmp_path)
    assert sorted(calls) == ["h1.t", "h1.tox", "h2.hostgen"]
    calls.clear()
    run.cells[0].attempts = run.cells[0].attempts  # an assignment counts, same value or not
    run.cells[1].category = copy.deepcopy(run.cells[1].category)
    store.save(run, tmp_path)
    assert sorted(calls) == ["h1.hostgen", "h1.tox"]


def test_a_change_during_serialization_is_saved_next_time(tmp_path, monkeypatch):
    """A cell changed by another thread while a save serializes it: that save may
    write either value, the next one writes the new."""
    run = sample()
    store.save(run, tmp_path)
    original = Cell.to_json
    late: list[Callable[[], None]] = [
        lambda: setattr(run.cells[0], "evidence", "late"),
        lambda: setattr(run.cells[1].category, "legend", "late legend"),
        lambda: run.cells[2].artifacts.append(Artifact("images/h1/late.tar", "tar", 1, "aa" * 32)),
    ]

    def racing(self):
        data = original(self)
        if late:
            late.pop(0)()  # the change lands after this cell was read
        return data

    monkeypatch.setattr(Cell, "to_json", racing)
    for cell in run.cells[:3]:
        cell.attempts += 1
    store.save(run, tmp_path)
    monkeypatch.setattr(Cell, "to_json", original)
    assert not late
    check(run, tmp_path)


def test_copies_of_cells_are_saved_correctly(tmp_path):
    run = sample()
    store.save(run, tmp_path)
    twin = copy.copy(run.cells[2])
    twin.artifacts = list(twin.artifacts)
    twin.row = "t2"
    deep = copy.deepcopy(run.cells[1])
    deep.row = "t3"  # each cell id once: the reader refuses a run with a cell twice
    deep.category.legend = "deep"
    thawed = pickle.loads(pickle.dumps(run.cells[3]))
    thawed.row = "t4"
    thawed.evidence = "thawed"
    run.cells += [twin, deep, thawed]
    check(run, tmp_path)
    twin.artifacts.append(Artifact("images/h1/x.tar", "tar", 1, "bb" * 32))
    check(run, tmp_path)
    assert len(run.cells[2].artifacts) == 1


def test_saved_text_does_not_change_equality_or_fields(tmp_path):
    run = sample()
    fresh = sample()
    store.save(run, tmp_path)
    assert run == fresh
    assert repr(run.cells[1]) == repr(fresh.cells[1])
    assert run.cells[1].to_json() == fresh.cells[1].to_json()


def test_write_stays_atomic(tmp_path, monkeypatch):
    run = sample()
    before = saved_text(run, tmp_path)
    run.cells[4].state = State.SUCCESS

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="No space left"):
            store.save(run, tmp_path)
    assert (tmp_path / "results.json").read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    # The failed write does not make the next save skip the change.
    check(run, tmp_path)


def test_save_writes_through_a_temporary_file_and_a_rename(tmp_path, monkeypatch):
    run = sample()
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def watching_replace(src, dst):
        assert json.loads(Path(src).read_text(encoding="utf-8")) == run.to_json()
        renames.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    store.save(run, tmp_path)
    run.cells[0].state = State.FAILED
    store.save(run, tmp_path)
    assert len(renames) == 2
    assert all(src.startswith(".results.json.") and dst == "results.json"
               for src, dst in renames)


def test_written_files_honour_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        store.write_atomically(tmp_path / "report.html", "<html></html>")
        assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o640
        os.umask(0o022)
        store.save(sample(), tmp_path)
        assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    finally:
        os.umask(old)
