"""A non-editable install works: the wheel built from this checkout, installed in a
fresh virtualenv and run from a directory outside the checkout, finds its hosts,
targets, elements and the tox row's inputs."""

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _run(args, *, cwd, env=None, timeout=900):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin dir of a fresh venv holding the wheel, a work dir outside the checkout, wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # setuptools' build directory goes to tmp: a build/ left in the checkout could
    # carry files the checkout no longer has into the wheel.
    extra = tmp / "build.cfg"
    extra.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n")
    env = dict(os.environ, DIST_EXTRA_CONFIG=str(extra))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp / "dist", REPO],
                 cwd=tmp, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("dib_matrix-*.whl")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    assert made.returncode == 0, made.stderr
    # Dependencies come from the wheel's metadata, not from this environment.
    done = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    work = tmp / "work"
    work.mkdir()
    return venv / "bin", work, wheel, built.stdout + built.stderr


def _env(work, **extra):
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("DIB_", "ELEMENTS_PATH"))}
    env.update(TMPDIR=str(work), **extra)
    return env


def test_the_wheel_carries_the_data_and_says_which_python(installed):
    _, _, wheel, output = installed
    assert "would be ignored" not in output
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        hook = whl.getinfo("dib/elements/debootstrap/root.d/08-debootstrap")
    assert "Requires-Python: >=3.10" in metadata
    for name in ("dib/elements/base/element-deps", "matrix/data/hosts/debian-bookworm.yaml",
                 "matrix/data/targets/debian-bookworm.yaml", "dib/selftest/tox.ini",
                 "dib/selftest/pyproject.toml", "dib/selftest/tests/unit/dib/test_elements.py",
                 "dib/lib/img-functions", "matrix/run/incontainer/tox-check.sh"):
        assert name in names
    assert (hook.external_attr >> 16) & 0o111  # hooks stay executable
    assert not any(n.startswith(("elements/", "hosts/", "targets/", "tests/")) for n in names)


def test_pip_refuses_the_orchestrator_on_python_3_9(installed, tmp_path):
    _, _, wheel, _ = installed
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "-d", tmp_path, wheel, "--python-version"]
    refused = _run([*args, "3.9"], cwd=tmp_path)
    assert refused.returncode != 0
    assert "requires a different Python" in refused.stderr
    assert _run([*args, "3.10"], cwd=tmp_path).returncode == 0


def test_installed_package_reads_no_checkout(installed):
    bin_dir, work, _, _ = installed
    done = _run([bin_dir / "python", "-c",
                 "import dib, matrix, dib.bundled as b; "
                 "print(dib.__file__, matrix.__file__, b.path('hosts'), b.path('elements'))"],
                cwd=work, env=_env(work))
    assert done.returncode == 0, done.stderr
    assert str(REPO) not in done.stdout
    assert "site-packages" in done.stdout


def test_plan_of_the_default_matrix(installed):
    bin_dir, work, _, _ = installed
    done = _run([bin_dir / "dib-matrix", "plan"], cwd=work, env=_env(work))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "debian-bookworm.hostgen" in done.stdout


def test_hosts_list(installed):
    bin_dir, work, _, _ = installed
    done = _run([bin_dir / "dib-matrix", "hosts", "list"], cwd=work, env=_env(work))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "debian-bookworm" in done.stdout


def test_dib_build_of_debian_minbase_to_tar(installed, image_cache):
    bin_dir, work, _, _ = installed
    out = work / "out" / "bookworm"
    done = _run([bin_dir / "dib-build", "-o", out, "-t", "tar", "--image-cache", image_cache,
                 "debian-minbase"], cwd=work, env=_env(work, DIB_RELEASE="bookworm"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with tarfile.open(f"{out}.tar") as tar:
        assert tar.extractfile("./etc/debian_version").read().decode().startswith("12.")


def test_one_host_run(installed):
    """hostgen, the tox row (dib's self-test shipped in the wheel) and one build."""
    bin_dir, work, _, _ = installed
    matrix = work / "one-host.yaml"
    matrix.write_text("name: one-host\nhosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"
                      "checks: [tox]\ntimeout: 20m\n")
    done = _run([bin_dir / "dib-matrix", "run", matrix, "--out", work / "runs"], cwd=work,
                env=_env(work), timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((work / "runs" / "latest" / "results.json").read_text())
    states = {c["id"]: c["state"] for c in data["cells"]}
    assert states == {"debian-bookworm.hostgen": "success", "debian-bookworm.tox": "success",
                      "debian-bookworm.debian-bookworm": "success"}
    # The installation's own tree, assembled outside the checkout, was baked and used.
    tree = Path(data["dib_tree"]["path"])
    assert REPO not in (tree, *tree.parents)
    assert (tree / "elements" / "debian-minbase").is_dir()
    assert (tree / "tests" / "unit" / "dib" / "test_elements.py").is_file()
