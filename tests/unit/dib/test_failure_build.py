"""Every kind of dib failure gives one record: in the log and beside the image.

dib's CLI runs in this process on fake elements (a fake base distro whose root.d
makes the tree) with fake tools first on PATH; chroot phases run through a fake
``chroot`` that maps the chroot's hook paths, so no root, mounts or network are used.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from dib import build, cli, environment, failure

REPO = Path(__file__).resolve().parents[3]

FAKE_CHROOT = r"""#!/bin/bash
# chroot ROOT COMMAND...: COMMAND on this machine, the chroot's /tmp/in_target.d under ROOT.
root=$1
shift
map() { case $1 in /tmp/in_target.d*) printf '%s' "$root$1" ;; *) printf '%s' "$1" ;; esac; }
args=()
for arg in "$@"; do args+=("$(map "$arg")"); done
TMP_HOOKS_PATH=$(map "$TMP_HOOKS_PATH")
DIB_HOOK_FAILURE_FILE=$(map "${DIB_HOOK_FAILURE_FILE:-}")
PATH="$root/tmp/in_target.d/bin:$(dirname "$0"):/usr/bin:/bin"
export TMP_HOOKS_PATH DIB_HOOK_FAILURE_FILE PATH
exec "${args[@]}"
"""
FAKE_APT_GET = """#!/bin/bash
echo "Reading package lists..."
echo "E: Unable to locate package ${!#}" >&2
exit 100
"""
FAKE_TAR = """#!/bin/bash
while [ $# -gt 1 ]; do [ "$1" = -cf ] && echo partial > "$2"; shift; done
echo "tar: ./etc/shadow: Cannot open: Permission denied" >&2
exit 2
"""


@dataclass
class Outcome:
    code: int
    lines: List[str]
    record: Optional[failure.FailureRecord]
    out: Path
    stderr: str

    @property
    def failure_lines(self) -> List[str]:
        return [line for line in self.lines if failure.LOG_PREFIX in line]


class Dib:
    """Fake elements, fake tools, and dib's CLI run in-process."""

    def __init__(self, tmp: Path, capsys, monkeypatch):
        self.tmp = tmp
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.elements = tmp / "elements"
        self.bin = tmp / "fakebin"
        self.bin.mkdir()
        self.element(
            "fakeos",
            {
                "element-provides": "operating-system\n",
                "root.d/10-fakeos": '#!/bin/bash\nset -eu\nmkdir -p "$TARGET_ROOT/etc"\n'
                'echo fake > "$TARGET_ROOT/etc/os-release"\n',
            },
        )

    def element(self, name: str, files: Dict[str, str]) -> Path:
        for relative, text in files.items():
            path = self.elements / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if relative.split("/")[0] in ("bin", "shims") or (
                relative.split("/")[0].endswith(".d") and not relative.startswith("environment.d")
            ):
                path.chmod(0o755)
        return self.elements / name

    def tool(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def fake_chroot(self) -> None:
        """A ``chroot`` that runs the hook here; dib starts it with the chroot's PATH."""
        self.tool("chroot", FAKE_CHROOT)
        self.monkeypatch.setattr(environment, "HOST_PATH", f"{self.bin}:{environment.HOST_PATH}")
        for name in ("mount", "umount"):
            self.tool(name, "#!/bin/sh\nexit 0\n")

    def run(self, *args: str, types: str = "tar") -> Outcome:
        out = self.tmp / "out" / "image"
        argv = ["-n", "--no-tmpfs", "-o", str(out), "-t", types]
        argv += ["--image-cache", str(self.tmp / "cache"), *args]
        self.capsys.readouterr()
        code = cli.main(argv)
        captured = self.capsys.readouterr()
        path = failure.path_for(out)
        record = failure.read(path) if path.exists() else None
        return Outcome(code, captured.out.splitlines(), record, out, captured.err)


@pytest.fixture
def dib(tmp_path, capsys, monkeypatch):
    for name in list(os.environ):
        if name.startswith("DIB_") or name in ("ELEMENTS_PATH", "break"):
            monkeypatch.delenv(name)
    runner = Dib(tmp_path, capsys, monkeypatch)
    monkeypatch.setenv("ELEMENTS_PATH", str(runner.elements))
    monkeypatch.setenv("PATH", f"{runner.bin}:{os.environ['PATH']}")
    monkeypatch.setattr(environment, "ensure_root", lambda: None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # build dirs under tmp_path
    logger = logging.getLogger("dib")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield runner
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def assert_one_record(outcome: Outcome) -> failure.FailureRecord:
    """One dib-failure line, just before the final ERROR line, the same as the file."""
    assert outcome.code != 0
    assert len(outcome.failure_lines) == 1, outcome.lines
    assert failure.LOG_PREFIX in outcome.lines[-2], outcome.lines[-3:]
    assert " | ERROR: " in outcome.lines[-1]
    logged = failure.FailureRecord.from_json(outcome.lines[-2])
    assert outcome.record == logged
    assert outcome.record.message == failure.bound(outcome.lines[-1].split(" | ERROR: ", 1)[1])
    assert outcome.record.version == 1 and outcome.record.seconds is not None
    return outcome.record


def test_hook_outside_the_chroot_names_its_element_and_its_own_error(dib):
    source = dib.element(
        "broken",
        {
            "root.d/50-broken": "#!/bin/bash\nset -eu\necho copying\n"
            'cp /nonexistent/thing "$TARGET_ROOT/"\necho never\n',
        },
    )
    record = assert_one_record(dib.run("fakeos", "broken"))
    assert record.kind == "hook"
    assert (record.phase, record.hook, record.element) == ("root.d", "50-broken", "broken")
    assert record.status == 1
    assert record.error == "cp: cannot stat '/nonexistent/thing': No such file or directory"
    assert record.command == str(source / "root.d" / "50-broken")
    assert record.message.startswith("root.d/50-broken failed with exit code 1: ")
    assert record.free_bytes["build"] > 0 and record.free_bytes["output"] > 0


def test_chroot_hook_maps_the_merged_tree_back_to_its_element(dib):
    dib.fake_chroot()
    dib.element("good", {"post-install.d/10-good": "#!/bin/bash\necho fine\n"})
    dib.element(
        "bad",
        {
            "post-install.d/80-bad": "#!/bin/bash\nset -e\necho working\nfrobnicate --now\n",
        },
    )
    record = assert_one_record(dib.run("fakeos", "good", "bad"))
    assert (record.kind, record.phase, record.hook) == ("hook", "post-install.d", "80-bad")
    assert record.element == "bad" and record.status == 127
    assert record.error.endswith("/post-install.d/80-bad: line 4: frobnicate: command not found")


def test_silent_hook_has_no_error_line_rather_than_dibs_own_words(dib):
    dib.element("quiet", {"root.d/50-quiet": "#!/bin/bash\nexit 7\n"})
    record = assert_one_record(dib.run("fakeos", "quiet"))
    assert (record.kind, record.hook, record.status, record.error) == ("hook", "50-quiet", 7, None)
    assert record.message == "root.d/50-quiet failed with exit code 7"


def test_python_hook_reports_its_traceback_line(dib):
    dib.element(
        "py",
        {
            "extra-data.d/20-py": f"#!{sys.executable}\nimport json\njson.loads('{{')\n",
        },
    )
    record = assert_one_record(dib.run("fakeos", "py"))
    assert (record.kind, record.hook, record.element) == ("hook", "20-py", "py")
    assert record.error.startswith("json.decoder.JSONDecodeError: Expecting property name")


def test_failed_package_install_is_kind_packages_with_apts_own_line(dib):
    dib.fake_chroot()
    dib.tool("apt-get", FAKE_APT_GET)
    dib.tool("apt-config", "#!/bin/sh\nexit 0\n")
    dpkg = REPO / "elements" / "dpkg"
    dib.element(
        "fakedpkg",
        {  # the real install-packages, without dpkg's other hooks
            "bin/install-packages": (dpkg / "bin" / "install-packages").read_text(),
            "shims/update-initramfs": (dpkg / "shims" / "update-initramfs").read_text(),
        },
    )
    outcome = dib.run("-p", "nosuchpkg", "fakeos", "fakedpkg", "package-installs")
    record = assert_one_record(outcome)
    assert record.kind == "packages"
    assert (record.phase, record.hook) == ("install.d", "01-package-installs")
    assert record.element == "package-installs"
    assert record.status == 100
    assert record.error == "E: Unable to locate package nosuchpkg"
    assert record.command.startswith("apt-get -y ") and record.command.endswith(" nosuchpkg")
    assert record.message.startswith("install.d/01-package-installs failed with exit code 100")


def test_failing_environment_file_is_named_with_its_element_and_line(dib):
    dib.element(
        "envbad",
        {
            "environment.d/99-envbad": "export DIB_X=1\nprobe-the-init-system --quiet\n",
        },
    )
    outcome = dib.run("fakeos", "envbad")
    record = assert_one_record(outcome)
    assert (record.kind, record.phase) == ("environment", "environment.d")
    assert (record.hook, record.element, record.status) == ("99-envbad", "envbad", 127)
    own = "/hooks/environment.d/99-envbad: line 2: probe-the-init-system: command not found"
    assert record.error == "$TMP_BUILD_DIR" + own  # the same on every run
    assert record.message.startswith("environment.d/99-envbad (element envbad) failed: /")
    assert record.message.endswith(own)
    assert record.command == str(dib.elements / "envbad" / "environment.d" / "99-envbad")
    assert "sourcing environment.d failed: ?" not in "\n".join(outcome.lines)


def test_environment_file_failing_in_the_hook_runner_is_named_too(dib):
    dib.element(
        "envlate",
        {  # fine while dib reads the defaults, fails before a hook
            "environment.d/50-envlate": 'if [ -n "${_DIB_PYTHON:-}" ]; then\n'
            '    echo "envlate: ERROR: no python here" >&2\n    false\nfi\n',
        },
    )
    record = assert_one_record(dib.run("fakeos", "envlate"))
    assert (record.kind, record.phase) == ("environment", "environment.d")
    assert (record.hook, record.element, record.status) == ("50-envlate", "envlate", 1)
    assert record.error == "envlate: ERROR: no python here"
    assert record.message.startswith(
        "environment.d/50-envlate (element envlate) failed before root.d/10-fakeos: "
    )


def _debootstrap_setup(dib, tmp_path, monkeypatch, script: str, release="fakerel") -> None:
    """A fake debootstrap with a script for 'fakerel' and a file: mirror carrying it."""
    dib.tool("debootstrap", script)
    (tmp_path / "dbs" / "scripts").mkdir(parents=True)
    (tmp_path / "dbs" / "scripts" / "fakerel").write_text("")
    (tmp_path / "mirror" / "dists" / "fakerel").mkdir(parents=True)
    (tmp_path / "mirror" / "dists" / "fakerel" / "Release").write_text("")
    monkeypatch.setenv("DEBOOTSTRAP_DIR", str(tmp_path / "dbs"))
    monkeypatch.setenv("DIB_DISTRIBUTION_MIRROR", f"file://{tmp_path / 'mirror'}")
    monkeypatch.setenv("DIB_RELEASE", release)


def test_debootstrap_failure_carries_debootstraps_own_line(dib, tmp_path, monkeypatch):
    fake = "#!/bin/sh\necho 'I: Retrieving InRelease'\n"
    fake += 'echo "E: Couldn\'t find these debs: nosuchdeb"\nexit 1\n'
    _debootstrap_setup(dib, tmp_path, monkeypatch, fake)
    record = assert_one_record(dib.run("debian-minbase"))
    assert record.kind == "debootstrap"
    assert (record.phase, record.hook, record.element) == (
        "root.d",
        "08-debootstrap",
        "debootstrap",
    )
    assert record.error == "E: Couldn't find these debs: nosuchdeb"
    assert record.status == 1
    assert record.command.startswith("debootstrap --variant=minbase --arch=amd64")
    assert "fakerel" in record.command


def test_missing_debootstrap_script_is_kind_debootstrap(dib, tmp_path, monkeypatch):
    _debootstrap_setup(dib, tmp_path, monkeypatch, "#!/bin/sh\nexit 0\n", release="forky-ish")
    record = assert_one_record(dib.run("debian-minbase"))
    assert record.kind == "debootstrap" and record.element == "debootstrap"
    assert record.error == f"No such script: {tmp_path}/dbs/scripts/forky-ish"


def test_output_failure_is_kind_output_with_the_tools_line(dib):
    dib.tool("tar", FAKE_TAR)
    record = assert_one_record(dib.run("fakeos"))
    assert record.kind == "output" and record.status == 2
    assert record.error == "tar: ./etc/shadow: Cannot open: Permission denied"
    assert record.command.startswith("tar -C $TMP_BUILD_DIR/mnt ") and record.phase is None
    assert record.message == "tar failed with exit code 2"
    assert not (dib.tmp / "out" / "image.tar").exists()  # no truncated image left behind


def test_missing_element_is_kind_elements(dib):
    outcome = dib.run("fakeos", "no-such-element")
    record = assert_one_record(outcome)
    assert outcome.code == 2
    assert record.kind == "elements"
    assert record.error.startswith("element 'no-such-element' not found (needed by the command")
    assert record.free_bytes["build"] is None and record.free_bytes["output"] > 0


def test_element_cycle_is_kind_elements(dib):
    dib.element("a", {"element-deps": "b\n"})
    dib.element("b", {"element-deps": "a\n"})
    record = assert_one_record(dib.run("fakeos", "a"))
    assert record.kind == "elements" and "cycle" in record.error


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["-t", "tar,iso"], {}, "unknown image type(s) iso"),
        ([], {"DIB_QCOW2_COMPRESSION": "lz4"}, "DIB_QCOW2_COMPRESSION='lz4' is not one of"),
        ([], {"break": "after-nothing"}, "break=after-nothing: unknown breakpoint"),
    ],
)
def test_bad_config_is_kind_config(dib, monkeypatch, args, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    outcome = dib.run(*args, "fakeos")
    record = assert_one_record(outcome)
    assert outcome.code == 2 and record.kind == "config"
    assert expected in record.error


def test_interrupt_is_kind_interrupted_and_says_where(dib):
    dib.element("slow", {"root.d/50-slow": '#!/bin/bash\nkill -TERM "$PPID"\nsleep 30\n'})
    outcome = dib.run("fakeos", "slow")
    record = assert_one_record(outcome)
    assert outcome.code == 130
    assert record.kind == "interrupted"
    assert (record.phase, record.hook, record.element) == ("root.d", "50-slow", "slow")
    assert record.message.startswith("interrupted (SIGTERM)")


def test_unexpected_exception_is_kind_internal(dib, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("merge went wrong")

    monkeypatch.setattr(build, "merge_elements", broken)
    outcome = dib.run("fakeos")
    record = assert_one_record(outcome)
    assert outcome.code == 1 and record.kind == "internal"
    assert record.error == "RuntimeError: merge went wrong"
    assert "RuntimeError: merge went wrong" in outcome.stderr  # the traceback, as before


def test_long_error_lines_are_bounded(dib):
    loud = "#!/bin/bash\necho \"ERROR: $(printf 'x%.0s' {1..5000})\"\nexit 4\n"
    dib.element("loud", {"root.d/50-loud": loud})
    outcome = dib.run("fakeos", "loud")
    record = assert_one_record(outcome)
    assert len(record.error) == failure.MAX_TEXT and record.error.startswith("ERROR: xxx")
    assert len(record.message) == failure.MAX_TEXT
    assert len(outcome.lines[-2]) < 4 * failure.MAX_TEXT


def test_stale_record_is_removed_and_success_writes_none(dib):
    stale = failure.path_for(dib.tmp / "out" / "image")
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"kind": "hook"}))
    outcome = dib.run("fakeos")
    assert outcome.code == 0, outcome.lines[-5:]
    assert not stale.exists() and outcome.record is None
    assert not outcome.failure_lines
    assert (dib.tmp / "out" / "image.tar").exists()
