"""tests/compat: the upstream wheel's extraction keeps modes; the shadow closure."""

import os
import stat
import zipfile

import pytest

from tests.compat import upstream


def _add(archive, name, data, mode):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    archive.writestr(info, data)


@pytest.fixture
def wheel(tmp_path):
    path = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        _add(archive, "pkg/elements/e/install.d/10-hook", "#!/bin/sh\n", 0o100755)
        _add(archive, "pkg/elements/e/README.rst", "readme\n", 0o100644)
        _add(archive, "pkg/elements/e/private", "x\n", 0o100600)
        _add(archive, "pkg/elements/e/link", "README.rst", 0o120777)
        archive.writestr("pkg/no-mode.txt", "plain\n")  # external_attr 0
    return path


def test_extraction_restores_modes(wheel, tmp_path):
    dest = upstream.extract_wheel(wheel, tmp_path / "out")
    hook = dest / "pkg/elements/e/install.d/10-hook"
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    assert os.access(hook, os.X_OK)
    assert stat.S_IMODE((dest / "pkg/elements/e/README.rst").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "pkg/elements/e/private").stat().st_mode) == 0o600
    assert (dest / "pkg/no-mode.txt").read_text() == "plain\n"


def test_extraction_keeps_symlinks_and_replaces_the_old_tree(wheel, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale").write_text("old")
    upstream.extract_wheel(wheel, dest)
    link = dest / "pkg/elements/e/link"
    assert link.is_symlink() and os.readlink(link) == "README.rst"
    assert not (dest / "stale").exists()
    assert not (tmp_path / "out.partial").exists()


def test_extraction_refuses_a_member_outside_the_tree(tmp_path):
    path = tmp_path / "evil.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../escape", "x")
    with pytest.raises(upstream.UpstreamError):
        upstream.extract_wheel(path, tmp_path / "out")


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path):
    (tmp_path / upstream.WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(upstream.UpstreamError, match="sha256"):
        upstream.fetch_wheel(tmp_path, offline=True)


def test_offline_without_a_cached_wheel_fails_clearly(tmp_path):
    with pytest.raises(upstream.UpstreamError, match="--offline"):
        upstream.fetch_wheel(tmp_path, offline=True)


def _element(root, name, deps=()):
    (root / name).mkdir(parents=True)
    (root / name / "element-deps").write_text("".join(f"{d}\n" for d in deps) + "# note\n")


def test_shadow_closure_stops_at_bundled_elements_but_keeps_the_one_under_test(tmp_path):
    _element(tmp_path, "openssh-server", ["dib-init-system", "package-installs", "runtime"])
    _element(tmp_path, "runtime", ["install-static", "dib-init-system"])
    _element(tmp_path, "install-static", ["package-installs"])
    _element(tmp_path, "dib-init-system")
    _element(tmp_path, "package-installs", ["install-bin"])
    _element(tmp_path, "install-bin")
    closure = upstream.shadow_closure(tmp_path, "openssh-server", ["package-installs"])
    assert closure == ["openssh-server", "dib-init-system", "runtime", "install-static"]
    own = upstream.shadow_closure(tmp_path, "package-installs", ["package-installs"])
    assert own == ["package-installs", "install-bin"]


def test_shadow_dir_holds_symlinks_only(tmp_path):
    _element(tmp_path / "up", "a")
    shadow = upstream.make_shadow_dir(tmp_path / "up", ["a"], tmp_path / "shadow")
    assert [p.name for p in shadow.iterdir()] == ["a"]
    assert (shadow / "a").is_symlink()


def test_a_case_shadows_its_element_its_upstream_extras_and_its_helpers_deps(tmp_path):
    from tests.compat.run import Case, shadow_elements

    for name, deps in {
        "cloud-init-nocloud": ["cloud-init-datasources"],
        "cloud-init-datasources": [],
        "cloud-init": ["package-installs"],
        "install-static": ["package-installs"],
        "package-installs": ["install-bin"],
        "install-bin": [],
        "vm": ["block-device", "bootloader"],
        "bootloader": [],
    }.items():
        _element(tmp_path, name, deps)
    bundled = ["package-installs", "vm", "bootloader"]
    nocloud = Case("cloud-init-nocloud", extra=["cloud-init"], expect=[{"file": "/x"}])
    assert shadow_elements(tmp_path, nocloud, bundled) == [
        "cloud-init-nocloud", "cloud-init-datasources", "cloud-init",
    ]
    # compat-static (a helper) needs install-static, which comes from upstream
    static = Case("install-static", extra=["compat-static"], expect=[{"file": "/x"}])
    assert shadow_elements(tmp_path, static, bundled) == ["install-static"]
    # the element under test is upstream's even when dib bundles it; a bundled extra is not
    boot = Case("bootloader", extra=["vm"], expect=[{"file": "/x"}])
    assert shadow_elements(tmp_path, boot, bundled) == ["bootloader"]
