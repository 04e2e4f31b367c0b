"""diskimage-builder's own elements (3.43.0, from its wheel) run unchanged on dib.

One real build: debian-minbase bookworm to tar with upstream dib-init-system, pkg-map,
modprobe, svc-map (with dib-python), manifests, install-types and pip-cache on
ELEMENTS_PATH, plus a small element of ours that gives each of them something to do. The checks
look at what those elements leave in the image, not only at dib's exit status.

The wheel is fetched once with pip into ~/.cache/dib-matrix/upstream-dib/ (checked
against its sha256); the test is skipped, saying so, when it can be had neither from
there nor from the package index.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, Sequence

import pytest

from tests.integration.dibhelpers import build_mounts, dib_env, make_element, run_dib

pytestmark = pytest.mark.integration

VERSION = "3.43.0"
WHEEL = f"diskimage_builder-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "ece951ea63ea0ea55ecb4c4a75d6d453dc5e77c5558aace3dee883fa0e2dd039"
CACHE = Path.home() / ".cache" / "dib-matrix" / "upstream-dib"
UPSTREAM = (
    "dib-init-system",
    "dib-python",
    "install-types",
    "manifests",
    "modprobe",
    "pip-cache",
    "pkg-map",
    "svc-map",
)


def _wheel() -> Path:
    wheel = CACHE / WHEEL
    if not wheel.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
                + ["-d", str(CACHE), f"diskimage-builder=={VERSION}"],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"diskimage-builder {VERSION}: pip download timed out (no package index?)")
        if done.returncode != 0 or not wheel.exists():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(
                f"diskimage-builder {VERSION} not cached and pip download failed: {last[0]}"
            )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest == WHEEL_SHA256, f"{wheel}: unexpected sha256 {digest}"
    return wheel


def _extract_elements(wheel: Path, names: Sequence[str], dest: Path) -> Path:
    """The named elements of the wheel under ``dest``, with their files' modes (zipfile
    drops them; hooks must stay executable)."""
    prefix = "diskimage_builder/elements/"
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            relative = info.filename[len(prefix) :]
            if relative.split("/")[0] not in names or "__pycache__" in relative:
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            mode = stat.S_IMODE(info.external_attr >> 16)
            if mode:
                target.chmod(mode)
    return dest


def _probe_element(root: Path) -> None:
    """Ours: something for each upstream element to act on, and a file with a dot in
    install.d that must never run."""
    marker = "#!/bin/bash\nset -eu\necho {0} > /etc/dib-upstream-installtype\n"
    make_element(
        root,
        "upstream-probe",
        {
            "element-deps": "\n".join(UPSTREAM) + "\n",
            "modprobe.d/dib-upstream-probe.conf": "blacklist dibprobemod\n",
            "svc-map": "dib-probe-svc:\n  default: probe-default\n  debian: probe-debian\n",
            "pkg-map": json.dumps({"default": {"probe-thing": "probe-pkg"}}),
            "install.d/upstream-probe-source-install/50-probe-source": marker.format("source"),
            "install.d/upstream-probe-package-install/50-probe-package": marker.format("package"),
            "install.d/upstream-probe.init": "#!/bin/bash\necho 'a data file ran' >&2\nexit 3\n",
        },
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, image_cache) -> Dict[str, object]:
    wheel = _wheel()
    tmp = tmp_path_factory.mktemp("upstream")
    upstream = _extract_elements(wheel, UPSTREAM, tmp / "upstream-elements")
    ours = tmp / "our-elements"
    _probe_element(ours)
    env = dib_env(
        tmp,
        {
            "DIB_RELEASE": "bookworm",
            "ELEMENTS_PATH": f"{ours}:{upstream}",
            "DIB_PYTHON_VERSION": "3",  # dib-python's Debian default (2) has no python2 now
            "DIB_MODPROBE_BLACKLIST": "dibprobemod2",
        },
    )
    out = tmp / "out" / "upstream"
    done = run_dib(
        ["-o", str(out), "-t", "tar", "--image-cache", str(image_cache), "debian-minbase"]
        + ["upstream-probe"],
        env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-5000:]
    return {"out": out, "log": done.stdout}


def _read(tar: tarfile.TarFile, name: str) -> str:
    member = tar.extractfile(name)
    assert member is not None, name
    return member.read().decode()


def test_upstream_elements_leave_their_files_in_the_image(built):
    with tarfile.open(f"{built['out']}.tar") as tar:
        names = set(tar.getnames())
        # dib-init-system: its environment.d check passed, its pre-install.d wrote this
        assert _read(tar, "./usr/local/bin/dib-init-system").endswith("echo systemd\n")
        # modprobe: extra-data.d found our element through get_image_element_array
        assert _read(tar, "./etc/modprobe.d/dib-upstream-probe.conf") == "blacklist dibprobemod\n"
        assert "blacklist dibprobemod2" in _read(tar, "./etc/modprobe.d/blacklist.conf")
        # pkg-map: every element's pkg-map, through get_image_element_array
        assert json.loads(_read(tar, "./usr/share/pkg-map/upstream-probe")) == {
            "default": {"probe-thing": "probe-pkg"}
        }
        assert "./usr/share/pkg-map/svc-map" in names
        # svc-map: merged from IMAGE_ELEMENT_YAML by a python hook, for debian
        assert "dib-probe-svc: probe-debian" in _read(tar, "./usr/share/svc-map/services")
        # install-types: the source hooks ran (the default), the package ones did not
        assert _read(tar, "./etc/dib-upstream-installtype") == "source\n"
        # manifests: DIB_ENV and DIB_ARGS recorded in the image
        environment = _read(tar, "./etc/dib-manifests/dib_environment")
        assert 'declare -x DIB_RELEASE="bookworm"' in environment
        assert 'declare -x DIB_PYTHON_VERSION="3"' in environment
        assert "upstream-probe" in _read(tar, "./etc/dib-manifests/dib_arguments")
        # dib-python's clean-up removed its link again
        assert "./usr/local/bin/dib-python" not in names


def test_manifests_are_saved_beside_the_image(built):
    saved = Path(f"{built['out']}.d") / "dib-manifests"
    assert 'DIB_RELEASE="bookworm"' in (saved / "dib_environment").read_text()


def test_a_phase_file_with_a_dot_never_ran(built):
    assert "a data file ran" not in built["log"]
    assert "not running upstream-probe.init" in built["log"]


def test_a_mount_an_element_left_in_the_image_is_released(built):
    """pip-cache binds the pip cache into the image's /tmp in root.d and leaves it."""
    assert "after post-root.d: unmounting " in built["log"]
    assert "/tmp/pip" in built["log"]
    assert build_mounts() == []


def test_image_is_tidied_as_disk_image_create_finishes_it(built):
    with tarfile.open(f"{built['out']}.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members if m.name.startswith("./tmp/")] == []
    logs = [m for m in members if m.name.startswith("./var/log/") and m.isfile()]
    assert logs and all(m.size == 0 for m in logs)
