"""diskimage-builder's environment contract, as its own elements rely on it.

Each test names the upstream element file that needs what it checks. No root, no
network: the build-level tests run dib's CLI in-process on fake elements (see
test_failure_build).
"""

from __future__ import annotations

import subprocess

import pytest

from dib.elements import bundled_elements_dir


@pytest.mark.parametrize(
    "element",
    ["debian-minimal", "ubuntu-minimal", "centos-minimal", "fedora-minimal", "opensuse-minimal"],
)
def test_base_distro_elements_export_the_init_system(element):
    """dib-init-system/environment.d/99-dib-init-system exits without DIB_INIT_SYSTEM."""
    env_dir = bundled_elements_dir() / element / "environment.d"
    files = sorted(str(p) for p in env_dir.iterdir())
    script = 'for f in "$@"; do source "$f"; done; bash -c \'echo "$DIB_INIT_SYSTEM"\''
    done = subprocess.run(
        ["bash", "-c", script, "env", *files],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "systemd"
