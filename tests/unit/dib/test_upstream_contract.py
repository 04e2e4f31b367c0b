"""diskimage-builder's environment contract, as its own elements rely on it.

Each test names the upstream element file that needs what it checks. No root, no
network: the build-level tests run dib's CLI in-process on fake elements (see
test_failure_build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dib import environment
from dib.elements import Element, bundled_elements_dir
from dib.packages import Distro, flat_pkg_map, plan_packages, write_pkg_maps
from dib.phases import HookTree, Phase
from tests.unit.dib import test_failure_build as harness

assert_one_record = harness.assert_one_record
dib = harness.dib  # the fixture: dib's CLI in-process on fake elements


@pytest.mark.parametrize(
    "element",
    ["debian-minbase", "ubuntu-minimal", "centos-minimal", "fedora-minimal", "opensuse-minimal"],
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


# ---- the environment every hook gets (disk-image-create's exports) ----------------------

PROBE = r"""#!/bin/bash
set -eu
out=$DIB_PROBE_DIR
printf '%s' "$DIB_ENV" > "$out/DIB_ENV"
printf '%s' "$DIB_ARGS" > "$out/DIB_ARGS"
printf '%s' "$DIB_DEFAULT_INSTALLTYPE" > "$out/DIB_DEFAULT_INSTALLTYPE"
"$DIB_PYTHON_EXEC" -c 'import sys; print(sys.executable, end="")' > "$out/DIB_PYTHON_EXEC"
printf '%s' "$DIB_PYTHON" > "$out/DIB_PYTHON"
printf '%s' "$IMAGE_ELEMENT_YAML" > "$out/IMAGE_ELEMENT_YAML"
printf '%s' "$_LIB" > "$out/_LIB"
printf '%s' "$IMAGE_NAME" > "$out/IMAGE_NAME"
# as pkg-map's and modprobe's extra-data.d hooks read the elements
eval declare -A image_elements=($(get_image_element_array))
for name in "${!image_elements[@]}"; do
    printf '%s=%s\n' "$name" "${image_elements[$name]}"
done | sort > "$out/array"
# dib's own helpers run on dib's interpreter, whatever DIB_PYTHON the image wants
"$_DIB_PYTHON" -c 'import dib.bootstrap' && echo ok > "$out/self-python"
"""


def _probe_build(dib, tmp_path, monkeypatch, *extra):
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("DIB_PROBE_DIR", str(probe))
    dib.element(
        "prober",
        {
            "root.d/50-probe": PROBE,
            # as diskimage-builder's dib-python element does for Debian
            "environment.d/50-image-python": "export DIB_PYTHON=python2\n",
        },
    )
    outcome = dib.run("fakeos", "prober", *extra)
    assert outcome.code == 0, outcome.lines[-20:]
    return {p.name: p.read_text() for p in probe.iterdir()}, outcome


def test_hooks_get_dib_env_dib_args_and_the_install_type(dib, tmp_path, monkeypatch):
    """manifests/cleanup.d/01-copy-manifests-dir writes $DIB_ENV and $DIB_ARGS under set -u."""
    tricky = 'a "quoted" $dollar `tick` \\ back'
    monkeypatch.setenv("DIB_TRICKY", tricky)
    monkeypatch.setenv("DIB_MULTI", "line one\nline two")
    probed, outcome = _probe_build(dib, tmp_path, monkeypatch)
    assert probed["DIB_ARGS"].endswith(" fakeos prober")
    assert probed["DIB_ARGS"].startswith("-n --no-tmpfs -o ")
    assert probed["DIB_DEFAULT_INSTALLTYPE"] == "source"
    assert probed["DIB_PYTHON_EXEC"] == sys.executable
    lines = probed["DIB_ENV"].splitlines()
    assert lines[0].startswith("declare -x DIB_ARGS=")
    # DIB_ENV reads back in bash as the caller's values
    readback = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$1"; printf "%s\\0%s\\0%s" "$DIB_TRICKY" "$DIB_MULTI" "$DIB_ARGS"',
            "x",
            probed["DIB_ENV"],
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    assert readback == [tricky, "line one\nline two", probed["DIB_ARGS"]]
    assert "DIB_PROBE_DIR" in probed["DIB_ENV"]
    assert "DIB_IMAGE_CACHE" not in probed["DIB_ENV"]  # dib's own settings are not the caller's


def test_image_name_is_the_output_path(dib, tmp_path, monkeypatch):
    """manifests saves to ${IMAGE_NAME}.d/, baremetal writes ${IMAGE_NAME}.vmlinuz."""
    probed, outcome = _probe_build(dib, tmp_path, monkeypatch)
    assert probed["IMAGE_NAME"] == str(outcome.out)


def test_install_type_comes_from_the_environment_or_the_flag(dib, tmp_path, monkeypatch):
    monkeypatch.setenv("DIB_DEFAULT_INSTALLTYPE", "package")
    probed, _ = _probe_build(dib, tmp_path, monkeypatch)
    assert probed["DIB_DEFAULT_INSTALLTYPE"] == "package"


def test_install_type_flag_wins(dib, tmp_path, monkeypatch):
    monkeypatch.setenv("DIB_DEFAULT_INSTALLTYPE", "package")
    probed, _ = _probe_build(dib, tmp_path, monkeypatch, "--install-type", "venv")
    assert probed["DIB_DEFAULT_INSTALLTYPE"] == "venv"


def test_image_python_is_not_dibs_own(dib, tmp_path, monkeypatch):
    """dib-python/environment.d/50-dib-python-version sets DIB_PYTHON for the image."""
    probed, _ = _probe_build(dib, tmp_path, monkeypatch)
    assert probed["DIB_PYTHON"] == "python2"
    assert probed["self-python"] == "ok\n"
    users = [
        p
        for p in bundled_elements_dir().rglob("*")
        if p.is_file() and '$DIB_PYTHON"' in p.read_text(errors="replace")
    ]
    assert users == []


def test_hooks_get_the_elements_as_yaml_and_as_an_array(dib, tmp_path, monkeypatch):
    """pkg-map, modprobe: get_image_element_array; svc-map: IMAGE_ELEMENT_YAML. An
    element path with a space survives both."""
    spaced = tmp_path / "my elements"
    spaced.mkdir()
    (dib.elements / "prober").mkdir(parents=True)
    monkeypatch.setenv("ELEMENTS_PATH", f"{spaced}:{dib.elements}")
    other = spaced / "spaced-one"
    other.mkdir()
    probed, _ = _probe_build(dib, tmp_path, monkeypatch, "spaced-one")
    expected = {
        "fakeos": str(dib.elements / "fakeos"),
        "prober": str(dib.elements / "prober"),
        "spaced-one": str(other),
    }
    assert yaml.safe_load(probed["IMAGE_ELEMENT_YAML"]) == expected
    assert probed["array"].splitlines() == [f"{k}={v}" for k, v in sorted(expected.items())]


def test_lib_holds_dibs_img_and_common_functions(dib, tmp_path, monkeypatch):
    probed, _ = _probe_build(dib, tmp_path, monkeypatch)
    lib = Path(probed["_LIB"])
    assert lib == environment.LIB_DIR
    check = (
        'set -eu -o pipefail; source "$1/img-functions"; source "$1/common-functions"; '
        "type -t select_boot_kernel_initrd mount_dev_pts_options unmount_dir die"
    )
    done = subprocess.run(
        ["bash", "-c", check, "x", str(lib)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["function"] * 4


def test_die_ends_the_hook_with_its_message(dib):
    dib.element(
        "dying",
        {"root.d/50-dying": '#!/bin/bash\nset -eu\n[ -d /nonexistent ] || die "no such tree"\n'},
    )
    record = assert_one_record(dib.run("fakeos", "dying"))
    assert (record.kind, record.hook, record.status) == ("hook", "50-dying", 1)
    assert record.error == "no such tree"


def test_unbound_variable_is_the_error_line(dib):
    dib.element(
        "unset",
        {
            "cleanup.d/01-unset": "#!/bin/bash\nset -eu\necho 'Error handling: none here'\n"
            'echo "$DIB_NOT_SET_ANYWHERE" > /dev/null\n',
        },
    )
    record = assert_one_record(dib.run("fakeos", "unset"))
    assert (record.kind, record.hook, record.status) == ("hook", "01-unset", 1)
    assert record.error.endswith("line 4: DIB_NOT_SET_ANYWHERE: unbound variable")


# ---- $_LIB/img-functions ----------------------------------------------------------------


def _select(root: Path, env=None):
    script = 'set -eu -o pipefail; source "$1/img-functions"; select_boot_kernel_initrd "$2"; '
    script += 'echo "$BOOTDIR $KERNEL $RAMDISK"'
    return subprocess.run(
        ["bash", "-c", script, "x", str(environment.LIB_DIR), str(root)],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def _tree(root: Path, release_file: str, boot_files):
    (root / "etc").mkdir(parents=True)
    (root / "etc" / release_file).write_text("x\n")
    (root / "boot").mkdir()
    for name in boot_files:
        (root / "boot" / name).write_text("")


def test_select_boot_kernel_initrd_debian_takes_the_newest(tmp_path):
    versions = ["6.1.0-9-amd64", "6.1.0-18-amd64", "6.1.0-10-amd64"]
    _tree(
        tmp_path,
        "debian_version",
        [f"{p}-{v}" for v in versions for p in ("vmlinuz", "initrd.img")],
    )
    done = _select(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    boot = tmp_path / "boot"
    assert done.stdout.split() == [str(boot), "vmlinuz-6.1.0-18-amd64", "initrd.img-6.1.0-18-amd64"]


def test_select_boot_kernel_initrd_redhat_skips_rescue_and_debug(tmp_path):
    _tree(
        tmp_path,
        "redhat-release",
        [
            "vmlinuz-5.14.0-70.el9.x86_64",
            "initramfs-5.14.0-70.el9.x86_64.img",
            "vmlinuz-0-rescue-abcdef",
            "vmlinuz-5.14.0-80.el9.x86_64+debug",
        ],
    )
    done = _select(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[1:] == [
        "vmlinuz-5.14.0-70.el9.x86_64",
        "initramfs-5.14.0-70.el9.x86_64.img",
    ]


def test_select_boot_kernel_initrd_patterns_win(tmp_path):
    _tree(tmp_path, "debian_version", ["vmlinuz-1", "initrd.img-1", "mykernel-2", "myinitrd-2"])
    env = {"DIB_BAREMETAL_KERNEL_PATTERN": "mykernel*", "DIB_BAREMETAL_INITRD_PATTERN": "myinitrd*"}
    done = _select(tmp_path, env)
    assert done.stdout.split()[1:] == ["mykernel-2", "myinitrd-2"]


def test_select_boot_kernel_initrd_without_a_kernel_fails_saying_so(tmp_path):
    _tree(tmp_path, "debian_version", [])
    done = _select(tmp_path)
    assert done.returncode == 1
    assert "no kernel found in" in done.stdout


# ---- install-types ----------------------------------------------------------------------

INSTALL_TYPES = (
    bundled_elements_dir() / "install-types" / "extra-data.d" / "99-enable-install-types"
)


def _install_types(tmp_path, env):
    install_d = tmp_path / "hooks" / "install.d"
    for relative in (
        "a-source-install/10-a-src",
        "a-package-install/10-a-pkg",
        "b-source-install/20-b-src",
        "my-app-source-install/30-app-src",
        "my-app-package-install/30-app-pkg",
    ):
        path = install_d / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/bash\n")
        path.chmod(0o755)
    full = {"PATH": "/usr/bin:/bin", "TMP_HOOKS_PATH": str(tmp_path / "hooks"), **env}
    subprocess.run([str(INSTALL_TYPES)], env=full, check=True, capture_output=True)
    tree = HookTree(tmp_path / "hooks")
    return {p.name: os.readlink(p) for p in tree.scripts(Phase.INSTALL)}


def test_install_types_default_source(tmp_path):
    linked = _install_types(tmp_path, {"DIB_DEFAULT_INSTALLTYPE": "source"})
    assert linked == {
        "10-a-src": "a-source-install/10-a-src",
        "20-b-src": "b-source-install/20-b-src",
        "30-app-src": "my-app-source-install/30-app-src",
    }


def test_install_types_per_element_with_dashes_as_underscores(tmp_path):
    env = {"DIB_DEFAULT_INSTALLTYPE": "source", "DIB_INSTALLTYPE_my_app": "package"}
    linked = _install_types(tmp_path, env)
    assert sorted(linked) == ["10-a-src", "20-b-src", "30-app-pkg"]


def test_install_types_element_with_a_type_it_lacks_runs_nothing(tmp_path):
    env = {"DIB_DEFAULT_INSTALLTYPE": "source", "DIB_INSTALLTYPE_b": "package"}
    assert sorted(_install_types(tmp_path, env)) == ["10-a-src", "30-app-src"]


def test_install_types_default_package(tmp_path):
    linked = _install_types(tmp_path, {"DIB_DEFAULT_INSTALLTYPE": "package"})
    assert sorted(linked) == ["10-a-pkg", "30-app-pkg"]


def test_base_pulls_in_install_types():
    assert "install-types" in (bundled_elements_dir() / "base" / "element-deps").read_text()


def test_linked_install_hooks_run_in_the_build(dib, monkeypatch, tmp_path):
    dib.fake_chroot()
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("DIB_PROBE_DIR", str(marks))
    monkeypatch.setenv("DIB_INSTALLTYPE_app", "package")
    hook = '#!/bin/bash\nset -eu\ntouch "$DIB_PROBE_DIR/$(basename "$0")"\n'
    dib.element(
        "app",
        {
            "install.d/app-source-install/50-app-src": hook,
            "install.d/app-package-install/50-app-pkg": hook,
        },
    )
    (dib.elements / "install-types").symlink_to(bundled_elements_dir() / "install-types")
    outcome = dib.run("fakeos", "install-types", "app")
    assert outcome.code == 0, outcome.lines[-20:]
    assert sorted(p.name for p in marks.iterdir()) == ["50-app-pkg"]


# ---- package-installs: installtype and dib_python_version -------------------------------


def _element(tmp_path, name, yaml_text, pkg_map=None):
    path = tmp_path / name
    path.mkdir()
    (path / "package-installs.yaml").write_text(yaml_text)
    if pkg_map is not None:
        (path / "pkg-map").write_text(json.dumps(pkg_map))
    return Element(name=name, path=path, deps=(), provides=())


def test_package_installtype_follows_the_elements_install_type(tmp_path):
    yaml_text = "src-dep:\n  installtype: source\npkg-dep:\n  installtype: package\nalways:\n"
    elements = [_element(tmp_path, "my-app", yaml_text)]
    debian = Distro("debian", "bookworm")

    def installed(env):
        return plan_packages(elements, debian, "amd64", env)["install.d"].install

    assert installed({}) == ["src-dep", "always"]  # diskimage-builder's default: source
    assert installed({"DIB_DEFAULT_INSTALLTYPE": "package"}) == ["pkg-dep", "always"]
    assert installed({"DIB_INSTALLTYPE_my_app": "package"}) == ["pkg-dep", "always"]


def test_package_dib_python_version(tmp_path):
    yaml_text = "PyYAML:\n  dib_python_version: 2\npython3-PyYAML:\n  dib_python_version: 3\n"
    elements = [_element(tmp_path, "svc", yaml_text)]
    plan = plan_packages(
        elements, Distro("debian", "bookworm"), "amd64", {"DIB_PYTHON_VERSION": "3"}
    )
    assert plan["install.d"].install == ["python3-PyYAML"]


# ---- install-packages -m / -u -----------------------------------------------------------

INSTALL_PACKAGES = bundled_elements_dir() / "dpkg" / "bin" / "install-packages"


@pytest.fixture
def apt(tmp_path):
    """install-packages with fake apt-get/apt-config; returns run(args) -> (code, out, calls)."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    log = tmp_path / "apt.log"
    (fake / "apt-get").write_text(f'#!/bin/bash\necho "$*" >> {log}\n')
    (fake / "apt-config").write_text("#!/bin/bash\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    hooks = tmp_path / "hooks"
    element = _element(
        tmp_path,
        "svc-map",
        "",
        {"family": {"debian": {"PyYAML": "python3-yaml", "gone": "", "two": "a b"}}},
    )
    write_pkg_maps([element], Distro("debian", "bookworm"), hooks / "package-installs" / "pkg-map")

    def run(*args):
        log.write_text("")
        env = {"PATH": f"{fake}:/usr/bin:/bin", "TMP_HOOKS_PATH": str(hooks)}
        done = subprocess.run(
            [str(INSTALL_PACKAGES), *args], env=env, capture_output=True, text=True, check=False
        )
        calls = [line.split() for line in log.read_text().splitlines()]
        return done.returncode, done.stdout + done.stderr, calls

    return run


def _packages(call):
    """The package arguments of one apt-get call (after the -y/-o options and the verb)."""
    words = [w for w in call if not w.startswith("-") and "::" not in w and "=" not in w]
    return words


def test_install_packages_maps_through_an_elements_pkg_map(apt):
    code, out, calls = apt("-m", "svc-map", "PyYAML", "gone", "two")
    assert code == 0, out
    assert len(calls) == 1
    assert _packages(calls[0]) == ["install", "python3-yaml", "a", "b"]


def test_install_packages_map_without_the_name_fails(apt):
    code, out, calls = apt("-m", "svc-map", "PyYAML", "nosuch")
    assert code == 1 and calls == []
    assert "pkg-map of element 'svc-map' has no entry for 'nosuch'" in out


def test_install_packages_map_of_an_element_without_one_fails(apt):
    code, out, calls = apt("-m", "nomap", "x")
    assert code == 2 and calls == []
    assert "element 'nomap' has no pkg-map" in out


def test_install_packages_everything_mapped_away_installs_nothing(apt):
    code, _, calls = apt("-m", "svc-map", "gone")
    assert code == 0 and calls == []


def test_install_packages_u_upgrades(apt):
    code, out, calls = apt("-u")
    assert code == 0, out
    assert [_packages(c) for c in calls] == [["dist-upgrade"]]


def test_install_packages_e_with_map_purges_the_mapped_names(apt):
    code, out, calls = apt("-e", "-m", "svc-map", "PyYAML")
    assert code == 0, out
    assert [_packages(c) for c in calls] == [["purge", "python3-yaml"], ["autoremove"]]


def test_flat_pkg_map_release_beats_distro_beats_family_beats_default():
    pkg_map = {
        "default": {"a": "a-default", "b": "b-default", "c": "c-default", "d": "d-default"},
        "family": {"debian": {"b": "b-family", "c": "c-family", "d": "d-family"}},
        "distro": {"debian": {"c": "c-distro", "d": "d-distro"}},
        "release": {"debian": {"bookworm": {"d": "d-release"}}},
    }
    assert flat_pkg_map(pkg_map, Distro("debian", "bookworm")) == {
        "a": "a-default",
        "b": "b-family",
        "c": "c-distro",
        "d": "d-release",
    }


# ---- sudo on a build machine without one -------------------------------------------------

FALLBACK_SUDO = environment.LIB_DIR / "fallback" / "sudo"


def test_host_hooks_find_dibs_sudo_last_on_their_path(tmp_path):
    path = environment.host_path(tmp_path, {"PATH": "/usr/bin:/bin"}).split(":")
    assert path[0] == str(tmp_path / "bin")
    assert path[-1] == str(FALLBACK_SUDO.parent)


@pytest.mark.skipif(os.geteuid() != 0, reason="dib's sudo stand-in runs commands for root only")
def test_fallback_sudo_runs_the_command_with_its_variables(tmp_path):
    done = subprocess.run(
        [str(FALLBACK_SUDO), "-E", "-H", "DIB_X=1", "sh", "-c", 'echo "$DIB_X $0"', "arg0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "1 arg0\n")


def test_fallback_sudo_refuses_another_user():
    done = subprocess.run(
        [str(FALLBACK_SUDO), "-u", "nobody", "true"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "cannot run as user 'nobody'" in done.stderr


def test_package_build_only_installs_then_removes_unless_kept(tmp_path):
    """python-stow-versions and others use build-only."""
    tool = _element(tmp_path, "tool", "gcc:\n  build-only: true\nmake:\n  build-only: true\n")
    keeper = _element(tmp_path, "keeper", "make:\n")
    plan = plan_packages([tool, keeper], Distro("debian", "bookworm"), "amd64", {})
    assert plan["install.d"].install == ["gcc", "make"]
    assert plan["install.d"].uninstall == ["gcc"]


# ---- mounts hooks leave inside the image -------------------------------------------------


def test_mounts_left_inside_the_image_are_released(tmp_path, monkeypatch):
    """pip-cache/root.d binds the pip cache into the image's /tmp and never unmounts it;
    disk-image-create unmounts the image after post-root.d."""
    from dib import build, chroot

    root = tmp_path / "mnt"
    root.mkdir()
    real = Path(os.path.realpath(root))
    mounted = [real / "tmp" / "pip", real]
    released = []
    monkeypatch.setattr(chroot, "mounts_under", lambda path: list(mounted))
    monkeypatch.setattr(chroot, "release_all", lambda path: released.append(path))
    opts = build.BuildOptions(elements=("x",), output=tmp_path / "image")
    builder = build.Builder(opts, None, HookTree(tmp_path / "hooks"), root, {})
    builder.release_element_mounts(Phase.POST_ROOT)
    assert released == [real / "tmp" / "pip"]  # never the image's root itself
    assert {Phase.POST_ROOT, Phase.CLEANUP} == build.RELEASE_AFTER


def test_image_is_tidied_as_disk_image_create_finishes_it(tmp_path):
    """finalise_base: /tmp emptied, /var/log truncated, /root/*.log removed."""
    from dib import build

    root = tmp_path / "mnt"
    files = {
        "tmp/leftover": "x",
        "tmp/dir/inner": "x",
        "var/log/apt/history.log": "lots",
        "var/log/dpkg.log": "lots",
        "root/build.log": "x",
        "root/.bashrc": "keep",
        "etc/keep.log": "keep",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    outside = tmp_path / "outside.log"
    outside.write_text("not the image's")
    (root / "var" / "log" / "link.log").symlink_to(outside)
    opts = build.BuildOptions(elements=("x",), output=tmp_path / "image")
    build.Builder(opts, None, HookTree(tmp_path / "hooks"), root, {}).tidy_image()
    assert list((root / "tmp").iterdir()) == []
    assert (root / "var" / "log" / "apt" / "history.log").read_text() == ""
    assert (root / "var" / "log" / "dpkg.log").read_text() == ""
    assert outside.read_text() == "not the image's"
    assert not (root / "root" / "build.log").exists()
    assert (root / "root" / ".bashrc").read_text() == "keep"
    assert (root / "etc" / "keep.log").read_text() == "keep"


def test_lib_defaults_keep_what_is_set_and_fill_the_rest():
    """opensuse/extra-data.d/01-inject-defaults copies $_LIB/common-defaults and img-defaults."""
    script = (
        'set -eu -o pipefail; source "$1/img-defaults"; '
        'echo "$ARCH $FS_TYPE $IMAGE_TYPE $IMAGE_NAME $DIB_CHECKSUM $DIB_NO_TMPFS"; '
        'case ":$PATH:" in *:/usr/sbin:*) echo sbin ;; esac'
    )
    done = subprocess.run(
        ["bash", "-c", script, "x", str(environment.LIB_DIR)],
        env={"PATH": "/usr/bin:/bin", "ARCH": "arm64", "IMAGE_NAME": "/out/x"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["arm64", "ext4", "qcow2", "/out/x", "0", "0", "sbin"]


def test_element_helpers_can_import_diskimage_builder_logging_config(dib, tmp_path, monkeypatch):
    """package-installs/bin/package-installs-squash: from diskimage_builder import
    logging_config; logging_config.setup(), run with "$DIB_PYTHON_EXEC"."""
    hook = (
        "#!/bin/bash\nset -eu\n"
        # as "sudo -E $DIB_PYTHON_EXEC ...": sudo drops PYTHONPATH
        'env -u PYTHONPATH "$DIB_PYTHON_EXEC" -c '
        '"from diskimage_builder import logging_config as c; c.setup(); '
        "import logging; logging.getLogger('x').info('helper logged')\"\n"
    )
    dib.element("helper", {"extra-data.d/50-helper": hook})
    outcome = dib.run("fakeos", "helper")
    assert outcome.code == 0, outcome.lines[-20:]
    assert any("INFO x [-] helper logged" in line for line in outcome.lines)
