"""dib-build for real: debootstrap, chroot, mkfs.ext4 -d, qemu-img — directly on this machine."""

import signal
import subprocess
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.dibhelpers import REPO, build_mounts, dib_cmd, dib_env, make_element, run_dib

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory, image_cache):
    """Cold then warm build of debian-minbase bookworm as tar and qcow2, the cached base
    on its own (the installed-tree cache, tested in test_tree_cache.py, kept out)."""
    tmp = tmp_path_factory.mktemp("bookworm")
    env = dib_env(tmp, {"DIB_RELEASE": "bookworm", "DIB_TREE_CACHE": "0"})
    args = [
        "-o",
        str(tmp / "out" / "bookworm"),
        "-t",
        "tar,qcow2",
        "-u",
        "--checksum",
        "--image-cache",
        str(image_cache),
        "debian-minbase",
    ]
    started = time.monotonic()
    cold = run_dib(args, env)
    cold_seconds = time.monotonic() - started
    assert cold.returncode == 0, cold.stdout[-3000:]
    started = time.monotonic()
    warm = run_dib(args, env)
    warm_seconds = time.monotonic() - started
    assert warm.returncode == 0, warm.stdout[-3000:]
    return {
        "out": tmp / "out",
        "cold": cold,
        "warm": warm,
        "tmp": tmp,
        "cold_seconds": cold_seconds,
        "warm_seconds": warm_seconds,
    }


def test_tarball_holds_a_debian_12_tree(bookworm):
    with tarfile.open(bookworm["out"] / "bookworm.tar") as tar:
        version = tar.extractfile("./etc/debian_version").read().decode()
        names = set(tar.getnames())
    assert version.startswith("12.")
    assert "./usr/bin/apt-get" in names
    assert "./usr/sbin/policy-rc.d" not in names  # removed by dpkg's cleanup.d


def test_qcow2_passes_check_and_holds_debian_12(bookworm):
    qcow2 = bookworm["out"] / "bookworm.qcow2"
    subprocess.run(["qemu-img", "check", str(qcow2)], check=True, capture_output=True)
    raw = bookworm["tmp"] / "check.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    version = subprocess.run(
        ["debugfs", "-R", "cat /etc/debian_version", str(raw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("12.")
    label = subprocess.run(["e2label", str(raw)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "cloudimg-rootfs"


def test_checksums_and_manifest_sit_next_to_the_images(bookworm):
    out = bookworm["out"]
    for name in ("bookworm.tar", "bookworm.qcow2"):
        subprocess.run(
            ["sha256sum", "-c", f"{name}.sha256"], cwd=out, check=True, capture_output=True
        )
    manifest = (out / "bookworm.packages").read_text().splitlines()
    assert any(line.startswith("apt ") for line in manifest)


def test_second_build_reuses_the_cached_base(bookworm):
    assert "using cached base" not in bookworm["cold"].stdout
    assert "using cached base" in bookworm["warm"].stdout
    assert "debootstrap | I: Retrieving" not in bookworm["warm"].stdout
    assert bookworm["warm_seconds"] < bookworm["cold_seconds"]


def test_logs_carry_timestamps_and_the_running_script(bookworm):
    lines = bookworm["cold"].stdout.splitlines()
    assert any(" | running root.d/08-debootstrap" in line for line in lines)
    assert any(" | pre-install.d/00-dpkg-setup | " in line for line in lines)
    assert all(line[:4].isdigit() for line in lines if line)


def test_offline_build_uses_only_the_cache(bookworm, image_cache, tmp_path):
    env = dib_env(
        tmp_path,
        {"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": "http://127.0.0.1:9/debian"},
    )
    done = run_dib(
        [
            "-o",
            str(tmp_path / "x"),
            "-t",
            "tar",
            "--offline",
            "--image-cache",
            str(image_cache),
            "-n",
            "debian-minbase",
        ],
        env,
    )
    assert done.returncode != 0
    assert "--offline: no cached base for debian bookworm" in done.stdout


def test_element_in_diskimage_builder_format_runs_unchanged(bookworm, image_cache, tmp_path):
    elements = tmp_path / "elements"
    make_element(
        elements,
        "hello",
        {
            "element-deps": "package-installs\n",
            "package-installs.yaml": "less:\nnano:\n  when: DIB_HELLO_FLAVOUR = big\n",
            "environment.d/10-hello.bash": "export DIB_HELLO_GREETING=${DIB_HELLO_GREETING:-hi}\n",
            "install.d/50-hello": "#!/bin/bash\nset -eux\n"
            'echo "$DIB_HELLO_GREETING from $DISTRO_NAME" > /etc/hello\n'
            "command -v less\n",
        },
    )
    env = dib_env(
        tmp_path,
        {"DIB_RELEASE": "bookworm", "ELEMENTS_PATH": str(elements), "DIB_HELLO_GREETING": "hello"},
    )
    done = run_dib(
        [
            "-o",
            str(tmp_path / "out/hello"),
            "-t",
            "tar",
            "--image-cache",
            str(image_cache),
            "debian-minbase",
            "hello",
        ],
        env,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    with tarfile.open(tmp_path / "out/hello.tar") as tar:
        assert tar.extractfile("./etc/hello").read() == b"hello from debian\n"
    packages = (tmp_path / "out/hello.packages").read_text()
    assert "\nless " in "\n" + packages
    assert "\nnano " not in "\n" + packages


def test_release_without_debootstrap_script_fails_with_debootstraps_line(image_cache, tmp_path):
    env = dib_env(tmp_path, {"DIB_RELEASE": "no-such-release"})
    started = time.monotonic()
    done = run_dib(
        [
            "-o",
            str(tmp_path / "x"),
            "-t",
            "tar",
            "--image-cache",
            str(image_cache),
            "debian-minbase",
        ],
        env,
    )
    assert done.returncode == 1
    line = "No such script: /usr/share/debootstrap/scripts/no-such-release"
    assert any(out.endswith(" | " + line) for out in done.stdout.splitlines())
    assert time.monotonic() - started < 20
    assert not build_mounts()


@pytest.mark.parametrize("offline", [False, True])
def test_a_cached_base_never_hides_a_missing_debootstrap_script(tmp_path, offline):
    """A base tree another host built for this release sits in the cache; this host's
    debootstrap has no script for it, so the build must still fail as debootstrap would."""
    from dib.bootstrap import spec_from_env

    env = dib_env(tmp_path, {"DIB_RELEASE": "no-such-release"})
    cache = tmp_path / "cache"
    cached = spec_from_env(env).cache_file(cache)
    cached.parent.mkdir(parents=True)
    with tarfile.open(cached, "w") as tar:
        tar.add(REPO / "README.md", arcname="./etc/motd")
    args = ["-o", str(tmp_path / "x"), "-t", "tar", "--image-cache", str(cache)]
    done = run_dib([*args, *(["--offline"] if offline else []), "debian-minbase"], env)
    assert done.returncode == 1
    assert "No such script: /usr/share/debootstrap/scripts/no-such-release" in done.stdout
    assert "using cached base" not in done.stdout
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize(
    "element, line",
    [("opensuse-minimal", "zypper not available"), ("fedora-minimal", "dnf not available")],
)
def test_rpm_distros_fail_at_once_without_their_tool(tmp_path, element, line):
    done = run_dib(["-o", str(tmp_path / "x"), "-t", "tar", element], dib_env(tmp_path))
    assert done.returncode == 1
    assert any(out.endswith(" | " + line) for out in done.stdout.splitlines())


def test_unreachable_mirror_fails_fast(tmp_path):
    env = dib_env(
        tmp_path,
        {"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": "http://127.0.0.1:9/debian"},
    )
    started = time.monotonic()
    done = run_dib(
        [
            "-o",
            str(tmp_path / "x"),
            "-t",
            "tar",
            "--image-cache",
            str(tmp_path / "cache"),
            "debian-minbase",
        ],
        env,
    )
    assert done.returncode == 1
    assert "mirror http://127.0.0.1:9/debian unreachable" in done.stdout
    assert time.monotonic() - started < 30


def test_mirror_without_the_suite_fails_fast(tmp_path):
    (tmp_path / "mirror/debian/dists").mkdir(parents=True)
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "mirror"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/debian"
        env = dib_env(tmp_path, {"DIB_RELEASE": "trixie", "DIB_DISTRIBUTION_MIRROR": mirror})
        done = run_dib(
            [
                "-o",
                str(tmp_path / "x"),
                "-t",
                "tar",
                "--image-cache",
                str(tmp_path / "cache"),
                "debian-minbase",
            ],
            env,
            timeout=60,
        )
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert f"mirror {mirror} does not carry suite 'trixie'" in done.stdout


def test_failing_chroot_script_leaves_no_mount_behind(bookworm, image_cache, tmp_path):
    elements = tmp_path / "elements"
    make_element(
        elements,
        "broken",
        {
            "install.d/50-broken": "#!/bin/bash\n"
            "test -e /proc/self/status\necho about to fail\nexit 3\n"
        },
    )
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", "ELEMENTS_PATH": str(elements)})
    done = run_dib(
        [
            "-o",
            str(tmp_path / "x"),
            "-t",
            "tar",
            "--image-cache",
            str(image_cache),
            "debian-minbase",
            "broken",
        ],
        env,
    )
    assert done.returncode == 1
    assert "install.d/50-broken failed with exit code 3: about to fail" in done.stdout
    assert not build_mounts()
    assert not list(tmp_path.glob("dib_build.*"))


def test_sigterm_mid_chroot_releases_everything(bookworm, image_cache, tmp_path):
    elements = tmp_path / "elements"
    make_element(elements, "slow", {"install.d/50-slow": "#!/bin/bash\necho sleeping\nsleep 600\n"})
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", "ELEMENTS_PATH": str(elements)})
    proc = subprocess.Popen(
        dib_cmd(
            "-o",
            str(tmp_path / "x"),
            "-t",
            "tar",
            "--image-cache",
            str(image_cache),
            "debian-minbase",
            "slow",
        ),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "install.d/50-slow | sleeping" in line:
            break
    assert build_mounts(), "expected the chroot mounts while the hook runs"
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted (SIGTERM)" in rest
    assert not build_mounts()
    assert not list(tmp_path.glob("dib_build.*"))
    hooks = subprocess.run(["pgrep", "-f", "install.d/50-slow"], capture_output=True)
    assert hooks.returncode == 1, "the hook process outlived the build"


@pytest.mark.slow
def test_kernel_with_initramfs_tools_builds_one_initramfs_into_a_zstd_qcow2(
    bookworm, image_cache, tmp_path
):
    """A kernel installed with initramfs-tools in one apt run (as -p does) gets its
    initramfs built once, by the trigger; ca-certificates' postinst runs with the
    caller's TMPDIR set to a host path (the chroot's hooks get /tmp)."""
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm"})
    out = tmp_path / "out" / "kernel"
    args = ["-o", str(out), "-t", "tar,qcow2", "--image-cache", str(image_cache)]
    args += ["-p", "linux-image-amd64,initramfs-tools,ca-certificates", "debian-minbase"]
    built = run_dib(args, env)
    assert built.returncode == 0, built.stdout[-3000:]
    generated = [
        line for line in built.stdout.splitlines() if "update-initramfs: Generating" in line
    ]
    assert len(generated) == 1, "\n".join(generated)
    assert "deferred to initramfs-tools' trigger" in built.stdout
    with tarfile.open(out.with_name("kernel.tar")) as tar:
        members = {m.name: m for m in tar.getmembers()}
    initrds = [m for name, m in members.items() if name.startswith("./boot/initrd.img-")]
    assert initrds and all(m.size > 1 << 20 for m in initrds), initrds
    assert "./etc/dpkg/dpkg.cfg.d/95dib-build" not in members  # build-time dpkg settings
    assert not [name for name in members if name.startswith("./tmp/")]  # install-packages' list
    qcow2 = out.with_name("kernel.qcow2")
    subprocess.run(["qemu-img", "check", str(qcow2)], check=True, capture_output=True)
    info = subprocess.run(
        ["qemu-img", "info", str(qcow2)], check=True, capture_output=True, text=True
    ).stdout
    assert "compression type: zstd" in info
