"""Investigation runs with real cells (``run --investigate``): a regression the dib tree
caused is proved by the last-good's kept tree passing; a flaky element by the same
inputs passing again; a regression with no last-good is unexplained, and says why no
other variant could run.

Kept small: the debian-bookworm host and target, ``checks: []``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import time
from pathlib import Path

import docker
import pytest

from results.archive import RunDir
from results.model import Cell, CellKind, RunResults, State
from tests.integration.dibhelpers import REPO
from tests.integration.matrixhelpers import cells_of, dib_matrix, target, write_matrix

pytestmark = pytest.mark.integration

# Passes, then fails, then passes... across cells of every run: a marker in the host's
# cache volume (mounted at /cache in every cell) flips on each build.
FLAKY_HOOK = """#!/bin/bash
marker=/cache/investigate-flaky-{token}
if [ -e "$marker" ]; then rm -f "$marker"; echo "flaky element: failing this time" >&2; exit 1; fi
touch "$marker"; echo "flaky element: passing this time"
"""


def _tree(tmp_path: Path, name: str, probe_exit: int, token: str) -> Path:
    """A copy of the dib tree with a ``probe`` element (its root.d hook exits
    ``probe_exit``) and a ``flaky`` one."""
    tree = tmp_path / name
    shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "elements", tree / "elements")
    for element, text in (("probe", f"#!/bin/bash\necho probe\nexit {probe_exit}\n"),
                          ("flaky", FLAKY_HOOK.format(token=token))):
        hook = tree / "elements" / element / "root.d" / "05-hook"
        hook.parent.mkdir(parents=True)
        hook.write_text(text)
        hook.chmod(0o755)
    return tree


def _matrix(tmp_path: Path, *targets: str) -> Path:
    return write_matrix(tmp_path, f"""\
name: investigate
hosts: [debian-bookworm]
targets: [{', '.join(targets)}]
checks: []
max-parallel: 2
timeout: 20m
""")


def _investigations(run_dir: Path) -> dict[str, dict]:
    data = json.loads((run_dir / "results.json").read_text())
    return {entry["cell"]: entry for entry in data.get("investigations", [])}


@pytest.mark.slow
def test_a_broken_element_is_the_dib_tree_and_a_flaky_one_is_flaky(tmp_path):
    token = secrets.token_hex(4)
    good, bad = _tree(tmp_path, "good", 0, token), _tree(tmp_path, "bad", 1, token)
    target(tmp_path, "probe", "probe")
    target(tmp_path, "flaky", "flaky")
    matrix = _matrix(tmp_path, "targets/probe.yaml", "targets/flaky.yaml")
    out = tmp_path / "out"
    first = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(good))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    started = time.monotonic()
    second = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(bad),
                        "--investigate")
    seconds = time.monotonic() - started
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    cells, data = cells_of(run_dir)
    found = _investigations(run_dir)
    probe = found["debian-bookworm.probe"]
    assert probe["verdict"] == "dib tree", probe
    assert "variant dib-tree passed" in probe["evidence"]
    states = {v["variant"]: v["state"] for v in probe["variants"]}
    assert states["rerun"] == "failed" and states["dib-tree"] == "success"
    whys = {i["variant"]: i["why"] for i in probe["impossible"]}
    assert "unchanged" in whys["host-image"] and "no snapshot" in whys["snapshot"]
    tree_variant = cells["debian-bookworm.probe--inv-dib-tree"]
    assert tree_variant["investigation"] == {"of": "debian-bookworm.probe",
                                             "variant": "dib-tree"}
    assert (run_dir / tree_variant["log"]).is_file()
    flaky = found["debian-bookworm.flaky"]
    assert flaky["verdict"] == "flaky", flaky
    assert [v["variant"] for v in flaky["variants"]] == ["rerun"]
    # The variants are no cells of the table: the counts are the two regressions.
    assert data["counts"] == {"failed": 2, "success": 1}
    report = (run_dir / "report.txt").read_text()
    assert "debian-bookworm.probe: dib tree" in report
    assert "debian-bookworm.flaky: flaky" in report
    assert 'id="investigations"' in (run_dir / "report.html").read_text()
    print(f"run with --investigate took {seconds:.0f} s; investigations: "
          + ", ".join(f"{c} {e['seconds']} s" for c, e in found.items()))


def test_a_regression_without_a_last_good_is_unexplained_and_says_why(tmp_path):
    """Quick: the broken element fails in its first hook, every time."""
    token = secrets.token_hex(4)
    bad = _tree(tmp_path, "bad", 1, token)
    target(tmp_path, "probe", "probe")
    matrix = _matrix(tmp_path, "targets/probe.yaml")
    out = tmp_path / "out"
    baseline = tmp_path / "baseline" / "20250101-000000-0001"
    baseline.mkdir(parents=True)
    RunDir(baseline).save(RunResults(
        baseline.name, str(matrix), ["debian-bookworm"], ["hostgen", "probe"],
        [Cell("debian-bookworm", "probe", CellKind.BUILD, State.SUCCESS)],
        started="2025-01-01T00:00:00+00:00"))
    done = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(bad),
                      "--investigate", "--baseline", str(baseline), "--no-package-cache")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    probe = _investigations(run_dir)["debian-bookworm.probe"]
    assert probe["verdict"] == "unexplained" and probe["baseline"] == baseline.name
    assert [v["variant"] for v in probe["variants"]] == ["rerun"]
    whys = {i["variant"]: i["why"] for i in probe["impossible"]}
    assert set(whys) == {"dib-tree", "host-image", "snapshot", "all"}
    assert all("no last-good" in whys[v] for v in ("dib-tree", "host-image", "snapshot"))
    assert "not possible: debian-bookworm.probe has no last-good" in (
        run_dir / "report.txt").read_text()


@pytest.mark.slow
def test_investigate_afterwards_adds_the_variants_to_the_finished_run(tmp_path):
    token = secrets.token_hex(4)
    good, bad = _tree(tmp_path, "good", 0, token), _tree(tmp_path, "bad", 1, token)
    target(tmp_path, "probe", "probe")
    matrix = _matrix(tmp_path, "targets/probe.yaml")
    out = tmp_path / "out"
    first = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(good))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(bad))
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    assert not _investigations(run_dir)
    started = time.monotonic()
    done = dib_matrix("investigate", str(run_dir), "--cells", "*.probe")
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = _investigations(run_dir)["debian-bookworm.probe"]
    assert probe["verdict"] == "dib tree", probe
    cells, data = cells_of(run_dir)
    assert cells["debian-bookworm.probe"]["state"] == "failed"  # its verdict stands
    assert cells["debian-bookworm.probe--inv-dib-tree"]["state"] == "success"
    assert data["counts"] == {"failed": 1, "success": 1}
    assert "debian-bookworm.probe: dib tree" in done.stdout
    print(f"dib-matrix investigate took {seconds:.0f} s")


BROKEN_CHROOT = "printf '#!/bin/sh\\necho broken chroot >&2\\nexit 3\\n' > /usr/local/sbin/chroot"


@pytest.fixture
def inv_host_images():
    """Remove the images the test's own host made (label org.dib-matrix.host=inv-host)."""
    yield
    client = docker.from_env()
    for image in client.images.list(filters={"label": "org.dib-matrix.host=inv-host"}):
        for tag in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag)


@pytest.mark.slow
@pytest.mark.usefixtures("inv_host_images")
def test_a_host_image_that_breaks_dib_is_the_host_image(tmp_path):
    """Host "inv-host" is debian-bookworm; its next definition adds a setup step that
    puts a broken ``chroot`` first on PATH (no fact the preflight probes changes)."""
    bundled = (REPO / "hosts" / "debian-bookworm.yaml").read_text()
    host = bundled.replace("name: debian-bookworm", "name: inv-host")
    matrix = write_matrix(tmp_path, """\
name: investigate-host
hosts: [hosts/inv-host.yaml]
targets: [debian-bookworm]
checks: []
timeout: 20m
""")
    (tmp_path / "hosts" / "inv-host.yaml").write_text(host)
    out = tmp_path / "out"
    first = dib_matrix("run", str(matrix), "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (tmp_path / "hosts" / "inv-host.yaml").write_text(
        host + f"setup:\n  - \"{BROKEN_CHROOT} && chmod +x /usr/local/sbin/chroot\"\n")
    second = dib_matrix("run", str(matrix), "--out", str(out), "--investigate")
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    found = _investigations(run_dir)["inv-host.debian-bookworm"]
    assert found["verdict"] == "host image", found
    whys = {i["variant"]: i["why"] for i in found["impossible"]}
    assert "unchanged" in whys["dib-tree"]


BROKEN_POSTINST = "#!/bin/sh\necho 'libsemanage-common: broken by the mirror' >&2\nexit 1\n"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@pytest.mark.slow
def test_a_package_the_mirror_broke_is_the_distribution(tmp_path):
    """The last-good run recorded its snapshot; tonight's mirror (a re-signed copy of
    that snapshot) has one package whose postinst exits 1: the snapshot variant, pinned
    to the last-good's snapshot, passes."""
    from tests.integration.localmirror import bump_package, joined_keyring, make_test_key, serve

    out = tmp_path / "out"
    recording = write_matrix(tmp_path, "name: investigate\nhosts: [debian-bookworm]\n"
                             "targets: [debian-bookworm]\nchecks: []\nsnapshot: record\n")
    first = dib_matrix("run", str(recording), "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    good_run = (out / "latest").resolve()

    mirror = tmp_path / "mirror"
    exported = dib_matrix("snapshot", "export", good_run.name, str(mirror))
    assert exported.returncode == 0, exported.stderr
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "elements", tree / "elements")
    with make_test_key(tmp_path / "key") as key:
        bump_package(mirror / "debian", "bookworm", "libsemanage-common", key,
                     postinst=BROKEN_POSTINST)
        # The copy is signed with the test key, the snapshot with Debian's: trust both.
        (tree / "testkeys").mkdir()
        joined_keyring(tree / "testkeys" / "archive.gpg", DEBIAN_KEYRING, key.keyring)
    with serve(mirror) as served:
        tonight = write_matrix(tmp_path, f"""\
name: investigate
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
env:
  DIB_DISTRIBUTION_MIRROR: {served.url}/debian
  DIB_APT_KEYRING: /opt/dib-matrix/testkeys/archive.gpg
""")
        second = dib_matrix("run", str(tonight), "--out", str(out), "--dib-tree", str(tree),
                            "--dib-mount", "--investigate")
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    found = _investigations(run_dir)["debian-bookworm.debian-bookworm"]
    assert found["verdict"] == "distribution packages", found
    cells, _ = cells_of(run_dir)
    assert cells["debian-bookworm.debian-bookworm--inv-snapshot"]["state"] == "success"
    assert cells["debian-bookworm.debian-bookworm--inv-rerun"]["state"] == "failed"
