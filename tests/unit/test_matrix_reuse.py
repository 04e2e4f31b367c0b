import shutil
from pathlib import Path

from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix
from matrix.run.plan import make_plan
from matrix.run.reuse import KeyMaker, index_previous
from results.model import Cell, CellKind, RunResults, State
from results.store import save

REPO = Path(__file__).resolve().parents[2]


def tree_copy(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "elements", tree / "elements")
    return tree


def cells(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("hosts: [debian-bookworm]\ntargets: [debian-sid, opensuse-leap-15]\n")
    return make_plan(load_matrix(matrix)).by_id()


def test_key_follows_the_element_closure_only(tmp_path):
    tree = tree_copy(tmp_path)
    plan = cells(tmp_path)
    debian, suse = plan["debian-bookworm.debian-sid"], plan["debian-bookworm.opensuse-leap-15"]
    before = KeyMaker(DibTree.read(tree))
    keys = (before.key(debian, "sha256:img"), before.key(suse, "sha256:img"))
    assert KeyMaker(DibTree.read(tree)).key(debian, "sha256:img") == keys[0]  # stable

    script = tree / "elements/debootstrap/root.d/08-debootstrap"
    script.write_text(script.read_text() + "# patched\n")
    after = KeyMaker(DibTree.read(tree))
    assert after.key(debian, "sha256:img") != keys[0]  # debian-minbase -> debootstrap
    assert after.key(suse, "sha256:img") == keys[1]  # opensuse's closure is untouched
    assert after.key(debian, "sha256:other-host-image") != after.key(debian, "sha256:img")


def test_previous_runs_index_prefers_newest_and_skips_failures(tmp_path):
    for run_id, state in (("20260101-000000-aaaa", State.SUCCESS),
                          ("20260102-000000-bbbb", State.FAILED)):
        run = RunResults(run_id, "m.yaml", ["h"], ["t"])
        run.cells = [Cell("h", "t", CellKind.BUILD, state, key="k1", attempts=1)]
        save(run, tmp_path / run_id)
    found = index_previous(tmp_path, exclude_run="now")
    assert found["k1"].run_dir.name == "20260101-000000-aaaa"
    with_failures = index_previous(tmp_path, exclude_run="now", with_failures=True)
    assert with_failures["k1"].run_dir.name == "20260102-000000-bbbb"


def test_boot_row_key_follows_its_build(tmp_path):
    tree = tree_copy(tmp_path)
    matrix = tmp_path / "vm.yaml"
    matrix.write_text("hosts: [debian-bookworm]\ntargets: [debian-bookworm-vm, debian-sid]\n")
    plan = make_plan(load_matrix(matrix)).by_id()
    build, boot = plan["debian-bookworm.debian-bookworm-vm"], plan[
        "debian-bookworm.debian-bookworm-vm:boot"]
    sid = plan["debian-bookworm.debian-sid"]
    before = KeyMaker(DibTree.read(tree))
    boot_key, sid_key = before.key(boot, "sha256:img"), before.key(sid, "sha256:img")
    assert boot_key is not None and boot_key != before.key(build, "sha256:img")

    marker = next((tree / "elements" / "growroot").rglob("*.d/*"))  # only the vm uses it
    marker.write_text(marker.read_text() + "# patched\n")
    after = KeyMaker(DibTree.read(tree))
    assert after.key(boot, "sha256:img") != boot_key
    assert after.key(sid, "sha256:img") == sid_key
