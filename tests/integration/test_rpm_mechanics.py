"""dib's dnf and zypper paths executed for real, against a local repository of stand-ins.

No RPM distribution's repository is reachable from this project's machines, so this
builds one: tiny noarch packages with the names fedora-minimal, centos-minimal and
opensuse-minimal (through yum-minimal, zypper-minimal and package-installs) ask for
(tests/integration/data/rpm/), made with rpmbuild and createrepo_c, served over HTTP
on 127.0.0.1. dib then builds each of the three elements in a container of the
``debian-bookworm-rpmtools`` host (Debian's dnf, zypper and rpm; host networking, the
matrix's capabilities) — and directly on this machine when dnf/zypper are installed
here. The checks are on the produced image: the repository configuration written into
it, the release, the rpm database inside the root (not under the build machine's
home), the names package-installs and pkg-map gave the image's package manager, the
``.packages`` manifest and the tar.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Tuple

import pytest
import yaml

from tests.integration.dibhelpers import REPO, build_mounts, dib_env, run_dib

# In the quick set (CI runs it): cold, the rpmtools host image is built first (about
# 4 minutes here, with its debootstrap); with the image cached it takes under a minute.
pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent / "data" / "rpm"
HOST = "debian-bookworm-rpmtools"
HOST_LABEL = "org.dib-matrix.host"
RUN_LABEL = "org.dib-matrix.run"
# As the matrix's cells (matrix/containers/engine.py): named capabilities, never privileged.
CAPABILITIES = ["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "MKNOD", "SETGID",
                "SETUID", "SYS_ADMIN", "SYS_CHROOT"]
DIB_MOUNT = "/opt/dib-matrix"
STANDIN_DIR = "usr/share/dib-standin"
BUILD_TIMEOUT = 600


@dataclass(frozen=True)
class Case:
    element: str
    release: str
    repo: str  # which stand-in repository (standins.yaml's groups)
    tool: str  # the package manager the image's install-packages calls
    repo_file: str  # the repository configuration dib writes into the image
    os_id: str
    version_id: str
    root_packages: Tuple[str, ...]  # installed from the build machine into the root
    # The arguments the image's package manager got from install-packages (after
    # pkg-map), the first line of its call record.
    chroot_call: str
    dbpath: str  # where the rpm database is in the image (the image's own rpm looks there)


CASES = {
    "fedora-minimal": Case(
        "fedora-minimal", "43", "fedora", "dnf", "etc/yum.repos.d/dib-fedora.repo",
        "fedora", "43",
        ("basesystem", "filesystem", "fedora-release", "fedora-repos", "dnf", "systemd",
         "systemd-udev", "glibc-langpack-en", "coreutils", "bash"),
        # lsb_release: fedora's own name (pkg-map, distro level)
        "-y --setopt=install_weak_deps=False install audit dracut dracut-config-generic "
        "grubby kernel lsb_release",
        "usr/lib/sysimage/rpm",
    ),
    "centos-minimal": Case(
        "centos-minimal", "9-stream", "centos", "dnf", "etc/yum.repos.d/dib-centos.repo",
        "centos", "9",
        ("basesystem", "filesystem", "centos-stream-release", "centos-gpg-keys", "dnf",
         "systemd", "curl", "bash"),
        # lsb_release: dropped on 9-stream (pkg-map, release level)
        "-y --setopt=install_weak_deps=False install audit dracut dracut-config-generic "
        "grubby kernel",
        "var/lib/rpm",
    ),
    "opensuse-minimal": Case(
        "opensuse-minimal", "15.6", "opensuse", "zypper", "etc/zypp/repos.d/oss.repo",
        "opensuse-leap", "15.6",
        ("filesystem", "patterns-base-minimal_base", "openSUSE-release", "zypper", "sudo",
         "python3", "bash", "coreutils", "systemd"),
        # linux-image-generic: kernel-default (pkg-map, family level)
        "--non-interactive install --no-recommends kernel-default bash lsb-release openssl "
        "sed sudo",
        "usr/lib/sysimage/rpm",
    ),
}
REPO_GROUPS = {
    "fedora": ("common", "dnf", "fedora"),
    "centos": ("common", "dnf", "centos"),
    "opensuse": ("common", "opensuse"),
}


# ---- the stand-in repository ---------------------------------------------------------

def _static_binaries(work: Path) -> Dict[str, Path]:
    """bash-static and busybox-static from Debian's archive (apt-get download, no install)."""
    wanted = {"bash": ("bash-static", "bin/bash-static"),
              "busybox": ("busybox-static", "bin/busybox")}
    found = {}
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for key, (package, relative) in wanted.items():
        tree = work / package
        if not (tree / relative).is_file():
            got = subprocess.run(["apt-get", "download", package], cwd=debs,
                                 capture_output=True, text=True, check=False)
            assert got.returncode == 0, f"apt-get download {package}: {got.stderr[-800:]}"
            deb = next(debs.glob(f"{package}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        found[key] = tree / relative
    return found


def _busybox_applets(busybox: Path) -> List[str]:
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    return [a for a in listed if a not in ("sh", "ash", "hush", "bash", "busybox")]


def _stage(name: str, spec: Mapping, tree: Path, binaries: Mapping[str, Path]) -> None:
    """The files of stand-in ``name`` under ``tree`` (its future root)."""
    payload = spec.get("payload", "marker")
    marker = tree / STANDIN_DIR / name
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"dib test stand-in for {name}\n")
    usr_bin = tree / "usr" / "bin"
    if payload == "layout":
        for directory in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "var/lib",
                          "var/log", "var/cache", "tmp", "root", "proc", "sys", "dev", "run",
                          "boot", "home", "opt", "srv", "mnt"):
            (tree / directory).mkdir(parents=True, exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64")):
            (tree / link).symlink_to(target)
    elif payload == "bash":
        usr_bin.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(binaries["bash"], usr_bin / "bash")
        (usr_bin / "bash").chmod(0o755)
        (usr_bin / "sh").symlink_to("bash")
    elif payload == "busybox":
        usr_bin.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(binaries["busybox"], usr_bin / "busybox")
        (usr_bin / "busybox").chmod(0o755)
        for applet in _busybox_applets(binaries["busybox"]):
            (usr_bin / applet).symlink_to("busybox")
    elif payload == "spy":
        usr_bin.mkdir(parents=True, exist_ok=True)
        text = (DATA / "spy.sh").read_text().replace("@TOOL@", name)
        (usr_bin / name).write_text(text)
        (usr_bin / name).chmod(0o755)
    elif payload == "os-release":
        fields = spec["os-release"]
        lines = "".join(f'{key}="{value}"\n' for key, value in fields.items())
        (tree / "etc").mkdir(parents=True, exist_ok=True)
        (tree / "etc" / "os-release").write_text(lines)
    elif payload != "marker":
        raise AssertionError(f"standins.yaml: {name}: unknown payload {payload}")


def _file_list(tree: Path, own_dirs: bool) -> List[str]:
    entries = []
    for top, dirs, files in os.walk(tree):
        for name in sorted(dirs):
            path = Path(top, name)
            if path.is_symlink():
                entries.append("/" + str(path.relative_to(tree)))
            elif own_dirs:
                entries.append("%dir /" + str(path.relative_to(tree)))
        for name in sorted(files):
            entries.append("/" + str(Path(top, name).relative_to(tree)))
    return entries


SPEC = """\
%define debug_package %{{nil}}
%define __os_install_post %{{nil}}
%define _build_id_links none
%define _binaries_in_noarch_packages_terminate_build 0
Name: {name}
Version: {version}
Release: 1
Summary: dib test stand-in for {name}
License: Apache-2.0
BuildArch: noarch
AutoReqProv: no
{requires}
%description
A stand-in with the name dib's RPM elements ask for (dib-matrix integration tests).
%install
cp -a {stage}/. %{{buildroot}}/
%files
{files}
"""


def _build_rpm(name: str, spec: Mapping, work: Path, binaries: Mapping[str, Path]) -> Path:
    stage = work / "stage" / name
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    _stage(name, spec, stage, binaries)
    requires = "".join(f"Requires: {r}\n" for r in spec.get("requires", ()))
    files = "\n".join(_file_list(stage, own_dirs=spec.get("payload") == "layout"))
    spec_path = work / "specs" / f"{name}.spec"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(SPEC.format(name=name, version=spec.get("version", "1.0"),
                                     requires=requires, stage=stage, files=files))
    topdir = work / "rpmbuild"
    built = subprocess.run(
        ["rpmbuild", "--define", f"_topdir {topdir}", "-bb", str(spec_path)],
        capture_output=True, text=True, check=False, env={**os.environ, "HOME": str(work)},
    )
    assert built.returncode == 0, f"rpmbuild {name}: {built.stdout[-1500:]}{built.stderr[-1500:]}"
    rpm = next((topdir / "RPMS" / "noarch").glob(f"{name}-{spec.get('version', '1.0')}-1.*rpm"))
    return rpm


def _make_repo(directory: Path, rpms: List[Path]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copyfile(rpm, directory / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(directory)], check=True)


def _alias(srv: Path, relative: str, repo_dir: Path) -> None:
    """Serve ``repo_dir`` also at ``srv/relative`` (the paths the elements build from the
    mirror variables)."""
    link = srv / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(repo_dir)


@pytest.fixture(scope="session")
def standin_tree(tmp_path_factory) -> Path:
    """Build the stand-in RPMs and their repositories once per session; returns the
    directory the HTTP server serves."""
    for tool in ("rpmbuild", "createrepo_c", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed on this machine (Debian packages rpm and "
                        "createrepo-c; set-up must install them)")
    work = tmp_path_factory.mktemp("rpm-standins")
    started = time.monotonic()
    binaries = _static_binaries(work)
    groups = yaml.safe_load((DATA / "standins.yaml").read_text())
    rpms: Dict[str, List[Path]] = {}
    for group, packages in groups.items():
        rpms[group] = [_build_rpm(name, spec or {}, work, binaries)
                       for name, spec in packages.items()]
    srv = work / "srv"
    repos = {}
    for repo, members in REPO_GROUPS.items():
        repos[repo] = work / "repos" / repo
        _make_repo(repos[repo], [rpm for group in members for rpm in rpms[group]])
    # One tree for all three, as a mirror of several distributions is laid out: the
    # paths the elements derive from DIB_DISTRIBUTION_MIRROR and DIB_OPENSUSE_MIRROR.
    _alias(srv, "mirror/releases/43/Everything/x86_64/os", repos["fedora"])
    _alias(srv, "mirror/updates/43/Everything/x86_64", repos["fedora"])
    for section in ("BaseOS", "AppStream"):
        _alias(srv, f"mirror/9-stream/{section}/x86_64/os", repos["centos"])
    _alias(srv, "mirror/distribution/leap/15.6/repo/oss", repos["opensuse"])
    _alias(srv, "mirror/update/leap/15.6/oss", repos["opensuse"])
    print(f"\nstand-in repositories built in {time.monotonic() - started:.1f} s")
    return srv


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: List[str] = []  # every path asked for, this session (for the offline test)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):
        _QuietHandler.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="session")
def repo_url(standin_tree) -> Iterator[str]:
    """http://127.0.0.1:PORT serving the stand-in tree (a thread, stopped at the end)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 partial(_QuietHandler, directory=str(standin_tree)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def mirror_env(url: str) -> Dict[str, str]:
    """The repository variables for all three elements (one mirror tree, see standin_tree)."""
    return {
        "DIB_DISTRIBUTION_MIRROR": f"{url}/mirror",
        "DIB_OPENSUSE_MIRROR": f"{url}/mirror",
        "DIB_ZYPPER_MINIMAL_GPGCHECK": "0",  # the stand-ins are not signed
    }


# ---- where dib runs ------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any engine problem means: no engine
        pytest.skip(f"no container engine: {exc}")
    yield client
    client.close()


def _newest_host_image(client) -> str | None:
    images = client.images.list(filters={"label": f"{HOST_LABEL}={HOST}"})
    if not images:
        return None
    newest = max(images, key=lambda image: image.attrs.get("Created", ""))
    return newest.tags[0] if newest.tags else newest.id


@pytest.fixture(scope="session")
def rpmtools_image(docker_client) -> str:
    """The debian-bookworm-rpmtools host image, built with dib-matrix if not there yet."""
    image = _newest_host_image(docker_client)
    if image is None:
        cli = Path(sys.executable).with_name("dib-matrix")
        built = subprocess.run([str(cli), "hosts", "build", HOST], cwd=REPO,
                               capture_output=True, text=True, check=False, timeout=1800)
        assert built.returncode == 0, f"dib-matrix hosts build {HOST}:\n{built.stdout[-3000:]}"
        image = _newest_host_image(docker_client)
    assert image, f"no image labelled {HOST_LABEL}={HOST}"
    return image


def run_in_container(client, image: str, case: Case, url: str, out: Path,
                     cache: Path, extra_args: Tuple[str, ...] = ()) -> Tuple[int, str]:
    run_id = f"test-rpm-{uuid.uuid4().hex[:10]}"
    env = {**mirror_env(url), "DIB_RELEASE": case.release, "PYTHONPATH": DIB_MOUNT}
    command = ["python3", "-m", "dib", "-o", f"/out/{case.element}", "-t", "tar",
               "--image-cache", "/cache", *extra_args, case.element]
    container = client.containers.create(
        image, command, environment=env, network_mode="host",
        cap_drop=["ALL"], cap_add=CAPABILITIES,
        labels={RUN_LABEL: run_id},
        volumes={str(REPO): {"bind": DIB_MOUNT, "mode": "ro"},
                 str(out): {"bind": "/out", "mode": "rw"},
                 str(cache): {"bind": "/cache", "mode": "rw"}},
    )
    try:
        container.start()
        status = container.wait(timeout=BUILD_TIMEOUT)
        log = container.logs().decode(errors="replace")
        return int(status.get("StatusCode", -1)), log
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def rpm_cache(tmp_path_factory) -> Path:
    """The image cache the container builds share (dnf's and zypper's caches in it)."""
    return tmp_path_factory.mktemp("rpm-cache")


@pytest.fixture(scope="module")
def built(tmp_path_factory, docker_client, rpmtools_image, repo_url, rpm_cache):
    """Each element built once in a rpmtools host container: {element: (out dir, log, s)}."""
    results = {}
    cache = rpm_cache
    for name, case in CASES.items():
        out = tmp_path_factory.mktemp(f"rpm-out-{case.repo}")
        started = time.monotonic()
        code, log = run_in_container(docker_client, rpmtools_image, case, repo_url, out, cache)
        seconds = time.monotonic() - started
        print(f"\n{name} in {HOST}: exit {code} in {seconds:.1f} s")
        results[name] = (out, code, log, seconds)
    return results


# ---- the checks ----------------------------------------------------------------------

def _read(tar: tarfile.TarFile, name: str) -> str:
    member = tar.extractfile("./" + name)
    assert member is not None, f"{name} is not a file in the image"
    return member.read().decode()


def _rpm_names(root: Path) -> List[str]:
    listed = subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-qa", "--qf", "%{NAME}\\n"],
        capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(root)},
    ).stdout.split()
    return sorted(listed)


def check_image(case: Case, out: Path, url: str, tmp: Path) -> None:
    image = out / f"{case.element}.tar"
    assert image.is_file(), f"no {image.name} in {sorted(p.name for p in out.iterdir())}"
    with tarfile.open(image) as tar:
        names = set(tar.getnames())
        tar_links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
        repo_text = _read(tar, case.repo_file)
        os_release = _read(tar, "etc/os-release")
        calls = _read(tar, f"var/lib/dib-standin/{case.tool}.calls")
        locale = _read(tar, "etc/locale.conf")
        zypp_conf = _read(tar, "etc/zypp/zypp.conf") if case.tool == "zypper" else ""
        root = tmp / "root"
        root.mkdir()
        tar.extractall(root, members=[m for m in tar.getmembers() if not m.isdev()])
    # The repositories the build used are the image's.
    if case.tool == "dnf":
        assert f"baseurl={url}/mirror/" in repo_text, repo_text
        assert "$releasever" in repo_text  # left for the image's dnf
    else:
        assert f"{url}/mirror/distribution/leap/{case.release}/repo/oss/" in repo_text
        assert "./etc/zypp/repos.d/update.repo" in names
        assert "solver.onlyRequires = true" in zypp_conf  # pre-install.d, in the chroot
    # The release: its package came from the releasever's path of the mirror.
    assert f'ID="{case.os_id}"' in os_release
    assert f'VERSION_ID="{case.version_id}"' in os_release
    # Installed into the root by the build machine's tool: files and rpm database both.
    for package in case.root_packages:
        assert f"./{STANDIN_DIR}/{package}" in names, package
    assert "./bin" in names and "./usr/bin/bash" in names
    installed = _rpm_names(root)
    assert set(case.root_packages) <= set(installed), installed
    assert not any(n.startswith("./root/.rpmdb") for n in names), "rpm database under ~"
    assert any(n.startswith(f"./{case.dbpath}/") for n in names), f"nothing in {case.dbpath}"
    if case.dbpath != "var/lib/rpm":
        link = tar_links.get("./var/lib/rpm")
        assert link == "../../usr/lib/sysimage/rpm", link
    # package-installs (pkg-map applied) handed to the image's own package manager.
    assert calls.splitlines()[0] == case.chroot_call, calls
    assert locale.strip() == 'LANG="en_US.UTF-8"'
    # The manifest beside the image.
    manifest = (out / f"{case.element}.packages").read_text().split("\n")
    listed = {line.split()[0] for line in manifest if line.strip()}
    assert set(case.root_packages) <= listed, manifest


@pytest.mark.parametrize("element", sorted(CASES))
def test_rpm_element_in_rpmtools_host(element, built, repo_url, tmp_path):
    out, code, log, _ = built[element]
    assert code == 0, log[-4000:]
    check_image(CASES[element], out, repo_url, tmp_path)


@pytest.mark.parametrize("element", ["fedora-minimal", "opensuse-minimal"])
def test_offline_rebuild_uses_the_cache_only(element, built, docker_client, rpmtools_image,
                                             repo_url, rpm_cache, tmp_path):
    """--offline after a build: the same image from the tools' caches, no request served."""
    assert built[element][1] == 0
    before = len(_QuietHandler.requests)
    code, log = run_in_container(docker_client, rpmtools_image, CASES[element], repo_url,
                                 tmp_path, rpm_cache, ("--offline",))
    assert code == 0, log[-4000:]
    assert _QuietHandler.requests[before:] == []
    with tarfile.open(tmp_path / f"{element}.tar") as tar:
        assert f"./{STANDIN_DIR}/filesystem" in tar.getnames()


@pytest.mark.parametrize("element", sorted(CASES))
def test_rpm_element_on_this_machine(element, tmp_path, image_cache, repo_url):
    """The same build straight on this machine, where its dnf or zypper is installed."""
    case = CASES[element]
    if shutil.which(case.tool) is None:
        pytest.skip(f"{case.tool} is not installed on this machine (the rpmtools host "
                    "container has it; see test_rpm_element_in_rpmtools_host)")
    out = tmp_path / "out"
    env = dib_env(tmp_path, {**mirror_env(repo_url), "DIB_RELEASE": case.release})
    result = run_dib(["-o", str(out / case.element), "-t", "tar", "--image-cache",
                      str(image_cache), case.element], env, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, result.stdout[-4000:]
    assert not build_mounts()
    check_image(case, out, repo_url, tmp_path)



def test_matrix_builds_the_rpm_targets_on_the_rpmtools_host(rpmtools_image, repo_url, tmp_path):
    """The same three builds as the matrix runs them: targets/*.yaml, the host's facts
    (dnf, zypper) passing the targets' preflight, cell containers, image checks."""
    targets = {"fedora-43": "fedora", "centos-stream9": "centos", "opensuse-leap-15": "opensuse"}
    env = "".join(f"  {k}: {v}\n" for k, v in mirror_env(repo_url).items())
    matrix = tmp_path / "rpm.yaml"
    matrix.write_text(
        f"name: rpm-mechanics\nhosts: [{HOST}]\ntargets: [{', '.join(targets)}]\n"
        f"checks: []\nmax-parallel: 3\ntimeout: 10m\nenv:\n{env}"
    )
    cli = Path(sys.executable).with_name("dib-matrix")
    out = tmp_path / "out"
    done = subprocess.run([str(cli), "run", str(matrix), "--out", str(out), "--dib-mount"],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    results = json.loads((out / "latest" / "results.json").read_text())
    states = {c["id"]: c["state"] for c in results["cells"]}
    for target in targets:
        assert states[f"{HOST}.{target}"] == "success", states
        image = out / "latest" / "images" / HOST / f"{target}.tar"
        with tarfile.open(image) as tar:
            release = tar.extractfile("./etc/os-release").read().decode()
        assert f'ID="{CASES[targets[target] + "-minimal"].os_id}"' in release
