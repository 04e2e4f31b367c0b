"""matrix.run.shards: columns onto shards, balance, the matrix hash, plan files, marks."""

from __future__ import annotations

import json
import shutil

import pytest

from matrix.cli import main
from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix
from matrix.run import shards
from matrix.run.plan import make_plan
from results.model import Cell, CellKind, RunResults, State

MATRIX = """\
hosts: [debian-bookworm, debian-trixie, ubuntu-noble]
targets: [debian-bookworm, debian-forky, debian-bookworm-vm]
checks: [tox]
exclude:
  - host: ubuntu-noble
    target: debian-forky
    reason: not here
"""


@pytest.fixture
def matrix_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return path


@pytest.fixture
def plan(matrix_file):
    return make_plan(load_matrix(matrix_file))


def tree(tmp_path, text="print('dib')\n"):
    root = tmp_path / "tree"
    (root / "dib").mkdir(parents=True, exist_ok=True)
    (root / "dib" / "__main__.py").write_text(text)
    (root / "elements" / "base").mkdir(parents=True, exist_ok=True)
    (root / "elements" / "base" / "README").write_text("base\n")
    return root


@pytest.mark.parametrize(("text", "expected"), [("1/4", (1, 4)), (" 4 / 4 ", (4, 4)),
                                                ("1/1", (1, 1))])
def test_parse_spec(text, expected):
    assert shards.parse_spec(text) == expected


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "1", "", "-1/2", "1/1001"])
def test_parse_spec_refuses(text):
    with pytest.raises(shards.ShardError):
        shards.parse_spec(text)


def test_every_host_column_lands_whole_in_one_shard(plan):
    split = shards.split(plan, 2)
    seen = [h for s in split.shards for h in s.hosts]
    assert sorted(seen) == sorted(h.name for h in plan.hosts)
    for shard in split.shards:
        part = shards.select(plan, split, shard.index)
        ids = {c.id for c in part.cells}
        for cell in part.cells:  # a shard never needs another shard's cell
            assert set(cell.needs) <= ids
            assert f"{cell.host.name}.hostgen" in ids
    total = sum(len(shards.select(plan, split, s.index).cells) for s in split.shards)
    assert total == len(plan.cells)


def test_split_is_deterministic_and_balanced_by_kind(plan):
    first = shards.split(plan, 2)
    assert first == shards.split(plan, 2)
    assert first.balance == "kind"
    # ubuntu-noble has an excluded cell: the lightest column, paired with another one.
    loads = sorted(s.estimate for s in first.shards)
    assert loads[1] - loads[0] <= max(shards.KIND_COST.values()) * 7
    assert first.to_json() == shards.split(plan, 2).to_json()


def test_more_shards_than_hosts_leaves_empty_shards_that_say_so(plan):
    split = shards.split(plan, 5)
    empty = [s for s in split.shards if not s.hosts]
    assert len(empty) == 2
    assert all(s.cells == 0 and "no cells" in s.label for s in empty)
    assert shards.select(plan, split, empty[0].index).cells == ()


def run_with(durations: dict[str, float], run_id: str) -> RunResults:
    cells = []
    for cell_id, seconds in durations.items():
        host, row = cell_id.split(".", 1)
        kind = CellKind.HOSTGEN if row == "hostgen" else CellKind.BUILD
        cells.append(Cell(host, row, kind, State.SUCCESS, duration=seconds))
    return RunResults(run_id, "m.yaml", [], [], cells)


def test_history_balances_by_recorded_durations(plan):
    history = [run_with({"debian-trixie.debian-bookworm": 3000.0,
                         "debian-bookworm.debian-bookworm": 10.0,
                         "ubuntu-noble.debian-bookworm": 10.0}, "r1")]
    estimates = shards.estimate(plan, history)
    assert estimates.source == "history"
    split = shards.split(plan, 2, estimates)
    heavy = next(s for s in split.shards if "debian-trixie" in s.hosts)
    assert heavy.hosts == ("debian-trixie",)
    # A cell without its own record takes its kind's median from the history.
    assert estimates.seconds["debian-bookworm.debian-forky"] == 10.0
    assert estimates.seconds["ubuntu-noble.debian-forky"] == 0.0  # excluded


def test_history_ignores_reused_skipped_and_pending_cells(plan):
    run = run_with({"debian-trixie.debian-bookworm": 3000.0}, "r1")
    run.cells[0].reused = True
    assert shards.estimate(plan, [run]).source == "kind"


def test_load_history_reads_runs_newest_first(tmp_path):
    from results.store import save

    for run_id in ("20260101-000000-aaaa", "20260102-000000-bbbb"):
        save(run_with({"h.t": 1.0}, run_id), tmp_path / run_id)
    (tmp_path / "latest").symlink_to("20260102-000000-bbbb")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text("{")
    found = shards.load_history(tmp_path)
    assert [r.run_id for r in found] == ["20260102-000000-bbbb", "20260101-000000-aaaa"]
    with pytest.raises(shards.ShardError):
        shards.load_history(tmp_path / "nope")


def test_matrix_hash_is_content_not_location(matrix_file, tmp_path, plan):
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    shutil.copy(matrix_file, elsewhere / "copy.yaml")
    assert shards.matrix_hash(make_plan(load_matrix(elsewhere / "copy.yaml"))) == \
        shards.matrix_hash(plan)
    (elsewhere / "changed.yaml").write_text(MATRIX.replace("reason: not here",
                                                           "reason: elsewhere"))
    assert shards.matrix_hash(make_plan(load_matrix(elsewhere / "changed.yaml"))) != \
        shards.matrix_hash(plan)
    # A selection is a different plan: shards of it must not merge with the whole.
    narrowed = make_plan(load_matrix(matrix_file), ["debian-*"])
    assert shards.matrix_hash(narrowed) != shards.matrix_hash(plan)


def test_the_mark_carries_the_trees_digest(plan, tmp_path):
    split = shards.split(plan, 2)
    first = shards.mark(plan, split, 1, DibTree.read(tree(tmp_path)))["dib_tree_digest"]
    assert first == DibTree.read(tree(tmp_path)).digest
    patched = DibTree.read(tree(tmp_path, "print('patched')\n"))
    assert shards.mark(plan, split, 2, patched)["dib_tree_digest"] != first


def test_mark_carries_the_whole_plan(plan, tmp_path):
    split = shards.split(plan, 2)
    mark = shards.mark(plan, split, 1, DibTree.read(tree(tmp_path)))
    assert mark["kind"] == "part" and mark["index"] == 1 and mark["count"] == 2
    assert mark["matrix_hash"] == shards.matrix_hash(plan)
    assert len(mark["plan"]["cells"]) == len(plan.cells)
    assert set(mark["plan"]["assignment"]) == {h.name for h in plan.hosts}
    assert mark["hosts"] == list(split.shards[0].hosts)
    json.dumps(mark)  # plain data


def test_plan_file_round_trip_and_checks(plan, tmp_path):
    estimates = shards.estimate(plan, [run_with({"debian-trixie.debian-bookworm": 3000.0},
                                                "r")])
    split = shards.split(plan, 2, estimates)
    path = tmp_path / "shards.json"
    path.write_text(json.dumps(split.to_json()))
    again = shards.from_plan_file(path, plan, 2)
    assert again.balance == "plan-file"
    assert again.assignment == split.assignment
    assert [s.hosts for s in again.shards] == [s.hosts for s in split.shards]
    # One shard's object (a CI job's matrix entry) is enough for that shard.
    path.write_text(json.dumps(split.to_json()[1]))
    one = shards.from_plan_file(path, plan, 2)
    assert one.shards[1].hosts == split.shards[1].hosts
    with pytest.raises(shards.ShardError, match="not of 3 shards"):
        shards.from_plan_file(path, plan, 3)
    stale = split.to_json()
    stale[0]["matrix_hash"] = "0" * 64
    path.write_text(json.dumps(stale))
    with pytest.raises(shards.ShardError, match="another matrix"):
        shards.from_plan_file(path, plan, 2)
    twice = split.to_json()
    twice[1]["hosts"] = twice[1]["hosts"] + twice[0]["hosts"]
    path.write_text(json.dumps(twice))
    with pytest.raises(shards.ShardError, match="two shards"):
        shards.from_plan_file(path, plan, 2)
    path.write_text("not json")
    with pytest.raises(shards.ShardError, match="cannot read"):
        shards.from_plan_file(path, plan, 2)


def test_plan_cli_prints_a_ci_matrix(matrix_file, capsys):
    assert main(["plan", str(matrix_file), "--shards", "4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["index"] for d in data] == [1, 2, 3, 4]
    assert [d["shard"] for d in data] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(d["label"].startswith(f"shard {d['shard']}") for d in data)
    assert data[3]["hosts"] == [] and data[3]["cells"] == 0
    assert len({d["matrix_hash"] for d in data}) == 1
    assert main(["plan", str(matrix_file), "--shards", "2"]) == 0
    out = capsys.readouterr().out
    assert "balanced by cell count and kind" in out and "1/2" in out


def test_plan_cli_refuses_bad_shard_options(matrix_file, capsys):
    assert main(["plan", str(matrix_file), "--shards", "0"]) == 2
    assert main(["plan", str(matrix_file), "--history", "out"]) == 2
    assert "--history needs --shards" in capsys.readouterr().err


def test_run_cli_refuses_bad_combinations(matrix_file, tmp_path, capsys):
    assert main(["run", str(matrix_file), "--shard", "3/2"]) == 2
    assert main(["run", str(matrix_file), "--cells", "*.tox"]) == 2
    assert "--cells needs --resume" in capsys.readouterr().err
    assert main(["run", str(matrix_file), "--shard-plan", str(tmp_path / "x.json")]) == 2
    assert "--shard-plan needs --shard" in capsys.readouterr().err


def test_the_boot_checks_a_target_chooses_are_part_of_the_plans_hash(plan):
    import dataclasses

    def with_checks(checks):
        cells = [dataclasses.replace(c, target=dataclasses.replace(c.target, boot_checks=checks))
                 if c.target is not None else c for c in plan.cells]
        return dataclasses.replace(plan, cells=cells)

    assert shards.matrix_hash(with_checks(None)) == shards.matrix_hash(plan)
    assert shards.matrix_hash(with_checks(("units",))) != shards.matrix_hash(plan)
    assert shards.matrix_hash(with_checks(())) != shards.matrix_hash(with_checks(("units",)))
