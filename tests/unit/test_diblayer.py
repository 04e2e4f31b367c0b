import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from matrix.config.dibtree import PARTS, DibTree
from matrix.hostgen.diblayer import TARGET, dockerfile, layer_reference

REPO = Path(__file__).resolve().parents[2]


def tree_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "dib", tree / "dib", ignore=ignore)
    shutil.copytree(REPO / "elements", tree / "elements", ignore=ignore)
    shutil.copy(REPO / "tox.ini", tree / "tox.ini")
    return tree


def test_the_layer_holds_the_present_parts_in_layer_order(tmp_path):
    tree = DibTree.read(tree_copy(tmp_path))
    assert tree.parts == ("tox.ini", "dib", "elements")  # missing parts are left out
    assert [p for p in PARTS if p in tree.parts] == list(tree.parts)
    assert "elements/debootstrap/root.d/08-debootstrap" in tree.contents()
    assert tree.modes()["elements/debootstrap/root.d/08-debootstrap"] & 0o100
    assert not any("__pycache__" in name for name in tree.files)
    lines = dockerfile(tree, "dib-matrix/host-x:abc").splitlines()
    assert lines == ["FROM dib-matrix/host-x:abc", f"COPY tox.ini {TARGET}/tox.ini",
                     f"COPY dib {TARGET}/dib", f"COPY elements {TARGET}/elements"]


def test_digest_changes_with_content_and_mode_only(tmp_path):
    tree = tree_copy(tmp_path)
    first = DibTree.read(tree)
    assert DibTree.read(tree).digest == first.digest
    hook = tree / "elements/growroot/README.rst"
    hook = hook if hook.exists() else next((tree / "elements/growroot").rglob("*.d/*"))
    os.utime(hook, (0, 0))  # times are not content
    assert DibTree.read(tree).digest == first.digest
    hook.write_text(hook.read_text() + "# patched\n")
    patched = DibTree.read(tree)
    assert patched.digest != first.digest
    os.chmod(hook, hook.stat().st_mode ^ 0o100)
    assert DibTree.read(tree).digest != patched.digest


def test_layer_tag_names_host_and_both_inputs(tmp_path):
    tree = DibTree.read(tree_copy(tmp_path))
    ref = layer_reference("debian-bookworm", "sha256:one", tree)
    assert ref.startswith("dib-matrix/dib-debian-bookworm:")
    assert ref == layer_reference("debian-bookworm", "sha256:one", tree)
    assert ref != layer_reference("debian-bookworm", "sha256:two", tree)


# -- leases and ensure (fake engine) --------------------------------------------


def baker_setup(tmp_path, monkeypatch):
    import io

    from matrix.containers.leases import Registry, RunLease
    from matrix.hostgen import diblayer
    from tests.unit.fakeengine import FakeImage, FakeImages

    host = FakeImage("sha256:" + "h" * 64, ["dib-matrix/host-h:abc"])
    client = SimpleNamespace(images=FakeImages(host))
    builds = []

    def build_image(client_, files, log, labels, tag, modes):
        builds.append(tag)
        client_.images.images[f"sha256:{len(builds):064x}"] = FakeImage(
            f"sha256:{len(builds):064x}", [tag], labels=labels)

    monkeypatch.setattr(diblayer, "build_image", build_image)
    lease = RunLease("run-1", Registry(tmp_path / "leases"))
    baker = diblayer.LayerBaker(DibTree.read(tree_copy(tmp_path)), lease=lease)
    return client, baker, lease, builds, io.BytesIO()


def test_bake_leases_the_host_image_and_the_layer_before_using_them(tmp_path, monkeypatch):
    client, baker, lease, builds, log = baker_setup(tmp_path, monkeypatch)
    layer = baker.bake(client, "h", "dib-matrix/host-h:abc", log)
    assert builds == [layer.reference] and not layer.cached
    assert lease.objects == {"dib-matrix/host-h:abc", "sha256:" + "h" * 64, layer.reference}
    (held,) = lease.registry.leases()
    assert held.objects == lease.objects and held.run_id == "run-1"
    assert baker.bake(client, "h", "dib-matrix/host-h:abc", log).cached


def test_ensure_rebakes_a_layer_removed_under_the_run(tmp_path, monkeypatch):
    client, baker, lease, builds, log = baker_setup(tmp_path, monkeypatch)
    reference = baker.bake(client, "h", "dib-matrix/host-h:abc", log).reference
    assert baker.ensure(client, "h", log) == reference and len(builds) == 1  # present: as is
    client.images.remove(reference)  # e.g. `docker rmi` or a run that honours no lease
    assert baker.ensure(client, "h", log) == reference
    assert builds == [reference, reference]
    assert f"dib layer {reference} is gone" in log.getvalue().decode()
    client.images.get(reference)


def test_ensure_without_a_baked_layer_or_host_image_is_a_layer_error(tmp_path, monkeypatch):
    from matrix.hostgen.diblayer import DibLayerError

    client, baker, lease, builds, log = baker_setup(tmp_path, monkeypatch)
    with pytest.raises(DibLayerError, match="no dib layer for host h"):
        baker.ensure(client, "h", log)
    reference = baker.bake(client, "h", "dib-matrix/host-h:abc", log).reference
    client.images.remove(reference)
    client.images.remove("dib-matrix/host-h:abc")
    with pytest.raises(DibLayerError, match="baking the dib layer on dib-matrix/host-h:abc"):
        baker.ensure(client, "h", log)
