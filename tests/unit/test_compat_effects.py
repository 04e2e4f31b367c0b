"""tests/compat: effects checked in a small image tarball (no extraction, no root)."""

import io
import json
import tarfile

import pytest

from tests.compat import effects
from tests.compat.run import TABLE, Case, Outcome, load_table, summary_lines

STATUS = """Package: openssh-server
Status: install ok installed
Version: 1:9.2p1-2

Package: removed-one
Status: deinstall ok config-files
"""


def _file(tar, name, text, mode=0o644):
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _link(tar, name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as tar:
        _file(tar, "./etc/debian_version", "12.7\n")
        _file(tar, "./etc/passwd", "root:x:0:0::/root:/bin/bash\ndebian:x:1000:1000::/:/bin/sh\n")
        _file(tar, "./var/lib/dpkg/status", STATUS)
        _file(tar, "./usr/lib/os-release", "VERSION_CODENAME=bookworm\n")
        _link(tar, "./etc/os-release", "../usr/lib/os-release")
        _link(tar, "./lib", "usr/lib")
        _file(tar, "./usr/lib/diskimage-builder/marker", "x\n")
        _link(tar, "./usr/local/bin/dib-python", "/usr/bin/python3")
        _link(tar, "./etc/systemd/system/multi-user.target.wants/ssh.service",
              "/lib/systemd/system/ssh.service")
        _file(tar, "./boot/vmlinuz-6.1.0-1-amd64", "k")
        _file(tar, "./etc/cloud/cloud.cfg", "cloud_init_modules:\n - growpart\n - seed\n")
    return path


@pytest.mark.parametrize(
    "effect",
    [
        {"file": "/etc/debian_version"},
        {"file": "/boot/vmlinuz-*"},
        {"file": "/lib/diskimage-builder/marker"},  # through the /lib symlink
        {"absent": "/usr/sbin/policy-rc.d"},
        {"symlink": "/usr/local/bin/dib-python"},
        {"contains": ["/etc/debian_version", r"^12\."]},
        {"contains": ["/etc/os-release", "^VERSION_CODENAME=bookworm$"]},  # relative link
        {"lacks": ["/etc/cloud/cloud.cfg", "^ - resizefs$"]},
        {"package": "openssh-server"},
        {"unit": "ssh.service"},
        {"user": "debian"},
    ],
)
def test_effects_that_hold(image, effect):
    assert effects.check(image, [effect]) == []


@pytest.mark.parametrize(
    "effect, why",
    [
        ({"file": "/etc/nothing"}, "not in the image"),
        ({"absent": "/etc/debian_version"}, "present"),
        ({"symlink": "/etc/debian_version"}, "no such symlink"),
        ({"contains": ["/etc/debian_version", "^11"]}, "no matching line"),
        ({"contains": ["/etc/missing", "x"]}, "not in the image"),
        ({"lacks": ["/etc/cloud/cloud.cfg", "^ - growpart$"]}, "a line matches"),
        ({"package": "removed-one"}, "not installed"),
        ({"package": "cloud-init"}, "not installed"),
        ({"unit": "cloud-init.service"}, "not enabled"),
        ({"user": "nobody"}, "no such user"),
    ],
)
def test_effects_that_do_not_hold(image, effect, why):
    (miss,) = effects.check(image, [effect])
    assert why in miss


def test_host_table_and_missing_tarball(tmp_path):
    output = tmp_path / "image"
    (tmp_path / "image.layout.json").write_text(json.dumps({"table": "gpt"}))
    (tmp_path / "dir").mkdir()
    assert effects.check(None, [{"table": "gpt"}], output) == []
    assert effects.check(None, [{"host": "{x}/dir"}], output, {"x": str(tmp_path)}) == []
    assert "layout says 'gpt'" in effects.check(None, [{"table": "mbr"}], output)[0]
    assert "no tarball" in effects.check(tmp_path / "none.tar", [{"file": "/x"}])[0]
    assert "not written" in effects.check(None, [{"disk": "qcow2"}], output)[0]


@pytest.mark.parametrize(
    "bad", [{"nope": "x"}, {"file": "a", "absent": "b"}, {"contains": "/x"}, {"file": ["a"]}]
)
def test_malformed_effects_are_refused(bad):
    with pytest.raises(effects.EffectError):
        effects.validate(bad)


def test_the_table_is_valid_and_every_runnable_case_checks_an_effect():
    cases = load_table(TABLE)
    assert len(cases) >= 45
    for case in cases:
        assert case.exclude or case.expect, case.element


def test_summary_counts_only_runnable_elements():
    outcomes = [
        Outcome("a", passed=True, built=True, seconds=1.0),
        Outcome("b", passed=False, built=False, seconds=1.0, error="E: boom", phase="install",
                hook="10-x", failed_element="b"),
    ]
    lines = summary_lines(outcomes, [Case("c", exclude="needs the internet")])
    assert lines[0] == "1 of 2 upstream elements built unchanged"
    assert "  b: E: boom [phase install, hook 10-x, element b]" in lines
    assert "  c: needs the internet" in lines
