"""yum-minimal's and zypper-minimal's install-packages (bin/), run with a recording
stand-in for the image's dnf or zypper."""

import os
import subprocess
from pathlib import Path

import pytest

ELEMENTS = Path(__file__).resolve().parents[2] / "elements"
TOOLS = {"yum-minimal": "dnf", "zypper-minimal": "zypper"}


@pytest.fixture(params=sorted(TOOLS))
def setup(request, tmp_path):
    element = request.param
    tool = TOOLS[element]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    fake = bindir / tool
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {calls}\nexit ${{FAKE_STATUS:-0}}\n')
    fake.chmod(0o755)
    maps = tmp_path / "hooks" / "package-installs" / "pkg-map"
    maps.mkdir(parents=True)
    (maps / "demo").write_text("lsb\tlsb-release\nkernel\tkernel-default extra-firmware\n"
                               "gone\t\n")
    return element, tool, bindir, calls, tmp_path


def run(setup, *args, status=0, path_has_tool=True):
    element, tool, bindir, calls, tmp = setup
    env = {"PATH": (f"{bindir}:" if path_has_tool else "") + "/usr/bin:/bin",
           "TMP_HOOKS_PATH": str(tmp / "hooks"), "FAKE_STATUS": str(status),
           "DIB_HOOK_FAILURE_FILE": str(tmp / "failure")}
    script = ELEMENTS / element / "bin" / "install-packages"
    done = subprocess.run([str(script), *args], env=env, capture_output=True, text=True,
                          check=False)
    recorded = calls.read_text().splitlines() if calls.exists() else []
    return done, recorded


def test_install_maps_names_and_drops_empty_ones(setup):
    _, tool, *_ = setup
    done, recorded = run(setup, "-m", "demo", "lsb", "kernel", "gone")
    assert done.returncode == 0, done.stderr
    expected = {"dnf": "-y --setopt=install_weak_deps=False install lsb-release "
                       "kernel-default extra-firmware",
                "zypper": "--non-interactive install --no-recommends lsb-release "
                          "kernel-default extra-firmware"}
    assert recorded == [expected[tool]]


def test_a_name_the_map_lacks_is_an_error(setup):
    done, recorded = run(setup, "-m", "demo", "nosuch")
    assert done.returncode == 1
    assert "has no entry for 'nosuch'" in done.stderr
    assert recorded == []


def test_nothing_left_runs_nothing(setup):
    done, recorded = run(setup, "-m", "demo", "gone")
    assert done.returncode == 0 and recorded == []


def test_remove_and_upgrade(setup):
    _, tool, *_ = setup
    run(setup, "-e", "foo")
    _, recorded = run(setup, "-u")
    assert recorded == ({"dnf": ["-y --setopt=install_weak_deps=False remove foo",
                                 "-y --setopt=install_weak_deps=False upgrade"],
                         "zypper": ["--non-interactive remove foo",
                                    "--non-interactive update"]}[tool])


def test_a_failing_tool_is_recorded_for_dib(setup):
    *_, tmp = setup
    done, _ = run(setup, "foo", status=7)
    assert done.returncode == 7
    record = (tmp / "failure").read_text()
    assert "kind=packages" in record and "status=7" in record and "foo" in record


@pytest.mark.skipif(any(os.path.exists(f"/usr/bin/{t}") or os.path.exists(f"/bin/{t}")
                        for t in TOOLS.values()), reason="this machine has dnf or zypper")
def test_no_tool_in_the_image(setup):
    _, tool, *_ = setup
    done, _ = run(setup, "foo", path_has_tool=False)
    assert done.returncode == 1
    assert f"{tool} not available in the image" in done.stderr
