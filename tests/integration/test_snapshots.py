"""Pinned repository snapshots with real runs: record a run, replay it with the mirror
blocked (and reuse the replay whole), bump it against a re-signed local mirror copy in
which one package has a new version, and replay a snapshot that lacks one .deb."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from reports.markdown import escape
from tests.integration.dibhelpers import REPO
from tests.integration.localmirror import (
    bump_package,
    drop_from_snapshot,
    make_test_key,
    serve,
)
from tests.integration.matrixhelpers import cells_of, dib_matrix, run_containers, write_matrix

pytestmark = pytest.mark.integration

BUILD = "debian-bookworm.debian-bookworm"
BUMPED = "libsemanage-common"  # in every bookworm minbase, tiny, Architecture: all
# A mirror nobody answers for (TEST-NET-1, a closed port): a pinned run must not need it.
BLOCKED = "http://192.0.2.1:9/debian"
KEY_IN_TREE = "testkeys/archive.gpg"  # the test key, inside the bind-mounted dib tree

RECORD = """\
name: snapshots
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
snapshot: record
"""


def pinned(name: str, mirror: str = BLOCKED) -> str:
    return f"""\
name: snapshots
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
snapshot: {name}
env:
  DIB_DISTRIBUTION_MIRROR: {mirror}
"""


def bumped(mirror: str) -> str:
    return f"""\
name: snapshots
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
env:
  DIB_DISTRIBUTION_MIRROR: {mirror}
  DIB_APT_KEYRING: /opt/dib-matrix/{KEY_IN_TREE}
"""


def _run(matrix: Path, out: Path, *extra: str):
    done = dib_matrix("run", str(matrix), "--out", str(out), *extra)
    return done, (out / "latest").resolve()


def _matrix(tmp_path: Path, name: str, body: str) -> Path:
    path = write_matrix(tmp_path, body)
    return path.rename(path.with_name(name))


def _version(cell: dict, package: str) -> str | None:
    return (cell.get("provenance", {}).get("packages") or {}).get(package)


def test_record_replay_offline_reuse_bump_and_incomplete(tmp_path):
    out = tmp_path / "out"
    store = Path(os.environ["DIB_MATRIX_SNAPSHOTS"])

    # 1. A live run records its repository state as a snapshot named after it.
    first, run1 = _run(_matrix(tmp_path, "record.yaml", RECORD), out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    cells, data = cells_of(run1)
    repository = data["repository"]
    assert repository["mode"] == "live" and repository["recorded"] == run1.name
    read = cells[BUILD]["provenance"]["repositories"]
    (suite,) = [r for r in read if r["suite"] == "bookworm"]
    assert len(suite["inrelease"]) == 64 and suite["date"]
    # The index: what the cell read (none when it started from a base dib cached from
    # this same state), and in any case in the snapshot, which keeps the run's indices.
    assert all(len(sha) == 64 for sha in suite["indices"].values())
    manifest = json.loads(dib_matrix("snapshot", "show", run1.name, "--json").stdout)
    assert "dists/bookworm/main/binary-amd64/Packages.xz" in json.dumps(manifest)
    old = _version(cells[BUILD], BUMPED)
    assert old, f"{BUMPED} not in the image"
    shown = dib_matrix("snapshot", "show", run1.name)
    assert shown.returncode == 0 and "bookworm" in shown.stdout, shown.stderr

    # 2. Replayed with the mirror blocked: served from the snapshot alone.
    replay = _matrix(tmp_path, "replay.yaml", pinned(run1.name))
    second, run2 = _run(replay, out, "--reuse")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    cells, data = cells_of(run2)
    assert cells[BUILD]["state"] == "success" and not cells[BUILD].get("reused")
    assert _version(cells[BUILD], BUMPED) == old
    assert data["repository"]["mode"] == "pinned"
    assert data["repository"]["snapshot"] == run1.name
    assert data["repository"]["valid_until_waived"] is True
    assert data["repository"]["stats"]["bytes_from_upstream"] == 0

    # 3. The same pinned night again: nothing changed, so it is reused whole.
    third, run3 = _run(replay, out, "--reuse")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    cells, _ = cells_of(run3)
    assert cells[BUILD]["reused"], cells[BUILD]

    # 4. A bump against a copy of the snapshot in which one package moved on.
    export = tmp_path / "mirror"
    exported = dib_matrix("snapshot", "export", run1.name, str(export))
    assert exported.returncode == 0, exported.stderr
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "elements", tree / "elements")
    with make_test_key(tmp_path / "key") as key:
        change = bump_package(export / "debian", "bookworm", BUMPED, key)
        (tree / KEY_IN_TREE).parent.mkdir(parents=True)
        shutil.copy(key.keyring, tree / KEY_IN_TREE)
    assert change.old_version == old
    with serve(export) as served:
        bump, run4 = _run(_matrix(tmp_path, "bump.yaml", bumped(served.url + "/debian")), out,
                          "--bump-from", str(run1), "--dib-tree", str(tree), "--dib-mount")
    assert bump.returncode == 0, bump.stdout[-3000:] + bump.stderr[-3000:]
    cells, data = cells_of(run4)
    assert _version(cells[BUILD], BUMPED) == change.new_version
    assert data["repository"]["bump_from"] == run1.name
    summary = (run4 / "bump.md").read_text()
    table = summary.split("#### Package changes", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # no header
    assert rows == [f"| {escape(BUMPED)} | {escape(old)} | {escape(change.new_version)} | "
                    f"1: {escape(BUILD)} |"], summary  # exactly that package's change

    # 5. A snapshot that lacks one .deb: its own cause, never "mirror unreachable".
    drop_from_snapshot(store, run1.name, BUMPED)
    fifth, run5 = _run(replay, out)
    cells, _ = cells_of(run5)
    build = cells[BUILD]
    assert build["state"] == "failed", build
    assert build["category"]["legend"] == f"snapshot-incomplete: {BUMPED}", build["category"]
    for run in (run1, run2, run3, run4, run5):
        assert run_containers(run) == []
    assert json.loads((run1 / "repository.json").read_text())["archives"]


@pytest.mark.slow
def test_a_snapshot_service_laid_out_like_snapshot_debian_org(tmp_path):
    """`snapshot: {url, timestamp}`: the run's mirror is URL/archive/debian/<timestamp>/,
    here a local server laid out so (a recorded snapshot, exported there)."""
    out = tmp_path / "out"
    first, run1 = _run(_matrix(tmp_path, "record.yaml", RECORD), out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    export = tmp_path / "export"
    exported = dib_matrix("snapshot", "export", run1.name, str(export))
    assert exported.returncode == 0, exported.stderr
    stamp = "20261207T000000Z"
    service = tmp_path / "service"
    (service / "archive" / "debian").mkdir(parents=True)
    (export / "debian").rename(service / "archive" / "debian" / stamp)
    with serve(service) as served:
        matrix = _matrix(tmp_path, "service.yaml", f"""\
name: snapshots
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
snapshot: {{url: "{served.url}", timestamp: "{stamp}"}}
""")
        done, run2 = _run(matrix, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells, data = cells_of(run2)
    mirror = f"{served.url}/archive/debian/{stamp}"
    assert data["repository"]["service"]["mirror"] == mirror
    assert data["repository"]["valid_until_waived"] is True
    (read,) = [r for r in cells[BUILD]["provenance"]["repositories"] if r["suite"] == "bookworm"]
    assert read["uri"] == mirror
