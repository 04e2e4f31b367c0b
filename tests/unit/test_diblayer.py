import os
import shutil
from pathlib import Path

from matrix.diblayer import LAYER_PARTS, TARGET, TreeSnapshot, layer_reference

REPO = Path(__file__).resolve().parents[2]


def tree_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "dib", tree / "dib", ignore=ignore)
    shutil.copytree(REPO / "elements", tree / "elements", ignore=ignore)
    shutil.copy(REPO / "tox.ini", tree / "tox.ini")
    return tree


def test_snapshot_holds_the_present_parts_in_layer_order(tmp_path):
    snapshot = TreeSnapshot.read(tree_copy(tmp_path))
    assert snapshot.parts == ("tox.ini", "dib", "elements")  # missing parts are left out
    assert [p for p in LAYER_PARTS if p in snapshot.parts] == list(snapshot.parts)
    assert "elements/debootstrap/root.d/08-debootstrap" in snapshot.files
    assert snapshot.modes["elements/debootstrap/root.d/08-debootstrap"] & 0o100
    assert not any("__pycache__" in name for name in snapshot.files)
    lines = snapshot.dockerfile("dib-matrix/host-x:abc").splitlines()
    assert lines == ["FROM dib-matrix/host-x:abc", f"COPY tox.ini {TARGET}/tox.ini",
                     f"COPY dib {TARGET}/dib", f"COPY elements {TARGET}/elements"]


def test_digest_changes_with_content_and_mode_only(tmp_path):
    tree = tree_copy(tmp_path)
    first = TreeSnapshot.read(tree)
    assert TreeSnapshot.read(tree).digest == first.digest
    hook = tree / "elements/growroot/README.rst"
    hook = hook if hook.exists() else next((tree / "elements/growroot").rglob("*.d/*"))
    os.utime(hook, (0, 0))  # times are not content
    assert TreeSnapshot.read(tree).digest == first.digest
    hook.write_text(hook.read_text() + "# patched\n")
    patched = TreeSnapshot.read(tree)
    assert patched.digest != first.digest
    os.chmod(hook, hook.stat().st_mode ^ 0o100)
    assert TreeSnapshot.read(tree).digest != patched.digest


def test_layer_tag_names_host_and_both_inputs(tmp_path):
    snapshot = TreeSnapshot.read(tree_copy(tmp_path))
    ref = layer_reference("debian-bookworm", "sha256:one", snapshot)
    assert ref.startswith("dib-matrix/dib-debian-bookworm:")
    assert ref == layer_reference("debian-bookworm", "sha256:one", snapshot)
    assert ref != layer_reference("debian-bookworm", "sha256:two", snapshot)
