"""Shards, merge and one-cell reruns on a real engine: 2 hosts x debian-minbase tar targets.

The module runs the matrix whole once, then as two shards one after the other on
this machine, merges them and compares: same verdicts, same gate. Then one cell of
the whole run is re-run in place.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.matrixhelpers import cells_of, dib_matrix, run_containers

pytestmark = pytest.mark.integration  # about 30 s with the hosts' images built

# debian-forky fails at once on the bookworm host (no debootstrap script: a preflight
# verdict), so the gate fails; the debian-bookworm cells are real dib builds of a
# minbase tar.
MATRIX = """\
name: sharded
hosts: [debian-bookworm, debian-trixie]
targets: [debian-bookworm, debian-forky]
checks: []
exclude:
  - host: debian-trixie
    target: debian-forky
    reason: its verdict would depend on the mirror of the day
max-parallel: 2
timeout: 20m
"""


def verdicts(run_dir):
    cells, _ = cells_of(run_dir)
    return {cid: (c["state"], (c.get("category") or {}).get("legend"), c["voting"])
            for cid, c in cells.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    matrix = tmp / "matrix.yaml"
    matrix.write_text(MATRIX)
    timings = {}
    started = time.monotonic()
    whole = dib_matrix("run", str(matrix), "--out", str(tmp / "whole"))
    timings["whole"] = time.monotonic() - started
    whole_dir = (tmp / "whole" / "latest").resolve()
    plan = dib_matrix("plan", str(matrix), "--shards", "2", "--format", "json")
    assert plan.returncode == 0, plan.stderr
    shards = json.loads(plan.stdout)
    parts = []
    for shard in shards:
        started = time.monotonic()
        done = dib_matrix("run", str(matrix), "--shard", shard["shard"], "--out",
                          str(tmp / f"shard{shard['index']}"))
        timings[shard["shard"]] = time.monotonic() - started
        parts.append((done, (tmp / f"shard{shard['index']}" / "latest").resolve()))
    return {"tmp": tmp, "matrix": matrix, "whole": (whole, whole_dir), "plan": shards,
            "parts": parts, "timings": timings}


def test_plan_splits_the_two_host_columns(runs):
    shards = runs["plan"]
    assert [s["hosts"] for s in shards] in (
        [["debian-bookworm"], ["debian-trixie"]], [["debian-trixie"], ["debian-bookworm"]])
    assert len({s["matrix_hash"] for s in shards}) == 1


def test_each_shard_is_a_normal_marked_run(runs):
    whole, _ = runs["whole"]
    assert whole.returncode == 1, whole.stdout[-3000:] + whole.stderr[-2000:]
    for (done, run_dir), planned in zip(runs["parts"], runs["plan"]):
        cells, data = cells_of(run_dir)
        assert data["shard"]["kind"] == "part"
        assert f"{data['shard']['index']}/{data['shard']['count']}" == planned["shard"]
        assert data["shard"]["matrix_hash"] == planned["matrix_hash"]
        assert data["hosts"] == planned["hosts"]
        assert {c["host"] for c in cells.values()} == set(planned["hosts"])
        assert (run_dir / "report.html").is_file() and (run_dir / "junit.xml").is_file()
        voting_failure = any(c["voting"] and c["state"] in ("failed", "timeout", "error")
                             for c in cells.values())
        if "debian-bookworm" in planned["hosts"]:
            assert voting_failure  # the forky preflight
        assert done.returncode == (1 if voting_failure else 0), done.stdout[-3000:]
        assert run_containers(run_dir) == []


def test_merge_gives_the_unsharded_verdicts_and_gate(runs):
    tmp = runs["tmp"]
    _, whole_dir = runs["whole"]
    out = tmp / "merged" / "run"
    done = dib_matrix("merge", *(str(d) for _, d in runs["parts"]), "-o", str(out))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # as the whole run
    assert verdicts(out) == verdicts(whole_dir)
    cells, data = cells_of(out)
    _, whole_data = cells_of(whole_dir)
    assert data["hosts"] == whole_data["hosts"] and data["rows"] == whole_data["rows"]
    assert data["shard"]["kind"] == "merged" and data["shard"]["missing"] == []
    build = cells["debian-trixie.debian-bookworm"]
    image = out / build["artifacts"][0]["path"]
    source = next(d for _, d in runs["parts"] if (d / build["artifacts"][0]["path"]).exists())
    assert image.stat().st_ino == (source / build["artifacts"][0]["path"]).stat().st_ino
    assert (out / build["log"]).is_file()
    for name in ("report.txt", "report.html", "junit.xml"):
        assert (out / name).is_file()
    # Gating against a baseline works on the merged run as on a single one.
    gated = dib_matrix("merge", *(str(d) for _, d in runs["parts"]), "-o",
                       str(tmp / "merged" / "gated"), "--baseline", str(whole_dir))
    assert gated.returncode == 0, gated.stdout[-2000:]
    assert dib_matrix("compare", str(whole_dir), str(out)).returncode == 0
    assert dib_matrix("compare", str(out), str(whole_dir)).returncode == 0


def test_merge_with_a_missing_shard_says_so(runs):
    tmp = runs["tmp"]
    _, first = runs["parts"][0]
    done = dib_matrix("merge", str(first), "-o", str(tmp / "merged" / "partial"))
    assert done.returncode == 2
    assert "shards missing: 2/2" in done.stderr
    cells, data = cells_of(tmp / "merged" / "partial")
    missing_hosts = set(runs["plan"][1]["hosts"])
    assert {c["state"] for c in cells.values() if c["host"] in missing_hosts} == {"pending"}
    assert data["interrupted"] is True


def test_one_cell_reruns_in_place_and_show_tells(runs):
    _, whole_dir = runs["whole"]
    before, _ = cells_of(whole_dir)
    cell_id = "debian-trixie.debian-bookworm"
    done = dib_matrix("run", "--resume", str(whole_dir), "--cells", "debian-trixie.debian-b*")
    # The forky failure on the bookworm host is kept: the gate still fails.
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    after, data = cells_of(whole_dir)
    assert after[cell_id]["state"] == "success"
    assert after[cell_id]["finished"] != before[cell_id]["finished"]
    for other in ("debian-bookworm.debian-bookworm", "debian-bookworm.debian-forky",
                  "debian-trixie.debian-forky", "debian-bookworm.hostgen"):
        assert after[other] == before[other], other  # not run again
    kept = whole_dir / "logs" / "debian-trixie" / "debian-bookworm.run-1.log"
    assert kept.is_file() and (whole_dir / after[cell_id]["log"]).is_file()
    assert "build finished" in (whole_dir / after[cell_id]["log"]).read_text()
    rerun = [r for r in data["reruns"] if r["cell"] == cell_id]
    assert rerun and rerun[0]["state"] == "success"
    assert rerun[0]["log"] == "logs/debian-trixie/debian-bookworm.run-1.log"
    assert run_containers(whole_dir) == []

    shown = dib_matrix("show", str(whole_dir), cell_id)
    assert shown.returncode == 0
    assert "success" in shown.stdout and "docker run" in shown.stdout
    assert "debian-bookworm.run-1.log" in shown.stdout
    log = dib_matrix("show", str(whole_dir), cell_id, "--log", "--tail", "5")
    assert log.returncode == 0 and log.stdout.strip()


def test_a_shard_without_cells_says_so_and_merges_as_given(runs):
    tmp, matrix = runs["tmp"], runs["matrix"]
    out = tmp / "empty"
    done = dib_matrix("run", str(matrix), "--shard", "3/3", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "shard 3/3 has no cells" in done.stdout
    cells, data = cells_of((out / "latest").resolve())
    assert cells == {} and data["shard"]["hosts"] == [] and data["shard"]["count"] == 3
    assert data["shard"]["matrix_hash"] == runs["plan"][0]["matrix_hash"]
