"""mkosi as the builders section's second yardstick, against a fake ``mkosi`` on PATH: its
command line, its failure line, its rows, and the section's build order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import builders, mkosibench
from bench.builders import Built
from bench.mkosibench import DibSide, Mkosi, MkosiBuilt, meaningful_line
from bench.workspace import Bench, BenchError
from dib import spawn

MIRROR = "http://mirror.example/debian"

# The fake: answers --version; a build writes the output and its manifest, or fails with
# the text and exit code in behaviour.json beside it. It records argv and cwd.
FAKE = """\
import json, os, sys
from pathlib import Path
here = Path(__file__).resolve().parent
behaviour = json.loads((here / "behaviour.json").read_text())
if sys.argv[1:] == ["--version"]:
    print(behaviour.get("version", "mkosi 14"))
    sys.exit(0)
with open(here / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
sys.stdout.buffer.write(behaviour.get("say", "").encode("utf-8", "surrogateescape"))
if behaviour.get("exit", 0):
    sys.exit(behaviour["exit"])
output = Path(sys.argv[sys.argv.index("--output") + 1])
output.write_bytes(b"q" * 4096)
packages = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--package=")][0]
names = [n for n in packages.split(",") if n] + ["systemd-resolved"]
manifest = {"packages": [{"type": "deb", "name": n} for n in names]}
Path(str(output) + ".manifest").write_text(json.dumps(manifest))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "mkosi"
    program.write_text(f"#!{sys.executable}\n{FAKE}")
    program.chmod(0o755)
    (bin_dir / "behaviour.json").write_text("{}")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def _behave(fake: Path, **behaviour: object) -> None:
    (fake / "behaviour.json").write_text(json.dumps(behaviour))


def _calls(fake: Path) -> list[dict]:
    path = fake / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _bench(tmp_path: Path, quick: bool = False) -> Bench:
    return Bench(work=tmp_path / "work", logs=tmp_path / "logs", quick=quick, mirror=MIRROR)


def _mkosi(tmp_path: Path, fake: Path) -> Mkosi:
    return Mkosi(str(fake / "mkosi"), "14", tmp_path / "work" / "builders" / "mkosi", MIRROR,
                 "bookworm", mkosibench.DISK)


def _result(text: str, code: int = 1, timed_out: bool = False) -> spawn.Result:
    return spawn.Result(("mkosi",), code, text.encode(), 12.0, timed_out=timed_out)


# --- finding it --------------------------------------------------------------------------

def test_not_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BenchError, match="apt-get install mkosi"):
        mkosibench.find(_bench(tmp_path), "bookworm")


def test_found_with_its_version_and_a_place_of_its_own(tmp_path, fake):
    found = mkosibench.find(_bench(tmp_path), "bookworm")
    assert found.name == "mkosi 14"
    assert found.root == tmp_path / "work" / "builders" / "mkosi"
    assert found.output in (mkosibench.DISK, mkosibench.TAR)


@pytest.mark.parametrize("answer", ["", "something else 14", "mkosi 14\nTraceback", "mkosi " +
                                    "9" * 300])
def test_an_odd_version_answer_is_one_line_why(tmp_path, fake, answer):
    _behave(fake, version=answer)
    with pytest.raises(BenchError) as err:
        mkosibench.find(_bench(tmp_path), "bookworm")
    assert "\n" not in str(err.value) and len(str(err.value)) < 220


# --- its command line ----------------------------------------------------------------------

def test_the_command_asks_for_the_same_content_and_its_own_incremental_mode(tmp_path, fake):
    argv = _mkosi(tmp_path, fake).argv(["systemd", "bash", "bash", "linux-image-amd64"])
    root = tmp_path / "work" / "builders" / "mkosi"
    assert argv[0] == str(fake / "mkosi") and argv[-1] == "build"
    assert argv[argv.index("--release") + 1] == "bookworm"
    assert argv[argv.index("--mirror") + 1] == MIRROR
    assert argv[argv.index("--cache") + 1] == str(root / "cache")
    assert argv[argv.index("--output") + 1] == str(root / "output" / "image.qcow2")
    for option in ("--nspawn-keep-unit=yes", "--incremental=yes", "--bootable=no",
                   "--with-docs=yes", "--qcow2"):
        assert option in argv
    assert "--package=bash,linux-image-amd64,systemd" in argv
    assert "--local-mirror" not in argv  # mkosi 14 lists the mirror twice with it


@pytest.mark.parametrize("hostile", [
    "--allow-unauthenticated", "-o=APT::Get::AllowUnauthenticated=1", "a,b", "Upper",
    "two words", "", "x", "name:amd64", "../../etc", "ok\nbuild", "é-accent",
])
def test_a_package_name_that_is_no_debian_name_never_reaches_apt(tmp_path, fake, hostile):
    argv = _mkosi(tmp_path, fake).argv(["bash", hostile])
    assert [a for a in argv if a.startswith("--package")] == ["--package=bash"]
    assert argv.count("build") == 1 and argv[-1] == "build"


def test_a_list_with_no_usable_name_is_not_built(tmp_path, fake):
    with pytest.raises(BenchError, match="no package list"):
        _mkosi(tmp_path, fake).build(_bench(tmp_path), "mkosi cold", ["--evil", "A"])
    assert _calls(fake) == []


# --- a build ---------------------------------------------------------------------------------

def test_a_build_runs_in_its_root_with_only_the_main_suite(tmp_path, fake):
    mkosi = _mkosi(tmp_path, fake)
    mkosi.cold()
    built = mkosi.build(_bench(tmp_path), "mkosi cold", ["bash", "systemd"])
    assert built.timed.ok and built.seconds is not None and built.failure == ""
    assert built.size == 4096
    assert built.packages == {"bash", "systemd", "systemd-resolved"}
    assert _calls(fake)[0]["cwd"] == str(mkosi.root)  # no mkosi.* file of anybody else's
    skeleton = mkosi.root / "skeleton" / "etc" / "apt" / "sources.list.d"
    assert sorted(p.name for p in skeleton.iterdir()) == [
        "bookworm-security.list", "bookworm-updates.list"]
    assert all(not line.startswith("deb") for p in skeleton.iterdir()
               for line in p.read_text().splitlines())
    assert (tmp_path / "logs" / "mkosi-cold.log").exists()


def test_cold_empties_its_caches_and_incremental_keeps_them(tmp_path, fake):
    mkosi = _mkosi(tmp_path, fake)
    mkosi.build(_bench(tmp_path), "mkosi cold", ["bash"])
    cached = mkosi.root / "output" / "image.qcow2.cache-pre-inst"
    cached.write_text("cache image")
    (mkosi.root / "cache" / "debian~bookworm").mkdir()
    mkosi.build(_bench(tmp_path), "mkosi incremental", ["bash"])
    assert cached.exists() and (mkosi.root / "cache" / "debian~bookworm").exists()
    mkosi.cold()
    assert not cached.exists() and not (mkosi.root / "cache").exists()


def test_a_failed_build_has_its_reason_and_no_size(tmp_path, fake):
    _behave(fake, exit=1, say="‣ Installing Debian…\n‣ Error: Workspace command /bin/rm "
            "returned non-zero exit code 1.\n‣ Unmounting image…\n")
    built = _mkosi(tmp_path, fake).build(_bench(tmp_path), "mkosi cold", ["bash"])
    assert built.seconds is None and built.size is None
    assert built.failure == ("failed (exit 1): Error: Workspace command /bin/rm returned "
                             "non-zero exit code 1.")


def test_a_process_left_naming_its_root_is_ended(tmp_path):
    root = tmp_path / "mkosi"
    (root / "workspace").mkdir(parents=True)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              f"--directory={root / 'workspace' / 'root'}"])
    try:
        for _ in range(50):  # until its command line is there to read
            if mkosibench.stray_processes(root):
                break
            time.sleep(0.05)
        released = mkosibench.release_leftovers(root)
        assert stray.wait(timeout=10) != 0
        assert released == [f"process {stray.pid} ({Path(sys.executable).name})"]
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    assert mkosibench.stray_processes(root) == []


# --- the failure line -------------------------------------------------------------------------

TRACEBACK_OF_APT = """\
‣     Installing Debian…
E: Conflicting values set for option Trusted
E: The list of sources could not be read.
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/mkosi/backend.py", line 860, in run
    return subprocess.run(cmdline, check=check)
subprocess.CalledProcessError: Command '['/usr/bin/apt-get', '-o', 'Dir=/x']' returned non-zero exit status 100.
"""  # noqa: E501


@pytest.mark.parametrize(("text", "reason"), [
    ("‣ Error: it broke\n‣ Unmounting…\nFailed to umount\n", "Error: it broke"),
    ("‣ \x1b[31;1mError: coloured\x1b[0m\n", "Error: coloured"),
    (TRACEBACK_OF_APT, "apt-get: E: The list of sources could not be read."),
    ("Traceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'root'\n",
     "KeyError: 'root'"),
    ("Failed to open system bus: No such file or directory\n\n\n",
     "Failed to open system bus: No such file or directory"),
    ("‣ Installing Debian…\n‣  Mounting API VFS…\n", "during: Mounting API VFS…"),
    ("", "no output"),
    ("\n \n\t\n", "no output"),
    ("bad \udcff\udcfe bytes\x00\x07 and \x1b]0;title\x07 controls\n",
     "bad \ufffd\ufffd bytes and ]0;title controls"),
])
def test_the_reason_is_the_last_meaningful_line(text, reason):
    assert meaningful_line(text.encode("utf-8", "surrogateescape")
                           .decode("utf-8", "replace")) == reason


def test_the_reason_is_one_bounded_line():
    line = meaningful_line("‣ Error: " + "x" * 5000 + "\r\nnext")
    assert len(line) <= 140 and line.endswith("…") and "\n" not in line
    reason = mkosibench.failure_reason(_result("E: " + "y" * 900, code=100))
    assert reason.startswith("failed (exit 100): E: yyy") and len(reason) < 170
    assert mkosibench.failure_reason(_result("‣ Installing Debian…", -2, timed_out=True)) == (
        "timed out after 12 s: during: Installing Debian…")


@pytest.mark.parametrize("manifest", [
    "not json", "[]", '{"packages": "bash"}', '{"packages": [1, null, {"name": 3}]}', "{}",
])
def test_an_unreadable_manifest_is_no_package(tmp_path, manifest):
    (tmp_path / "image.qcow2.manifest").write_text(manifest)
    assert mkosibench.manifest_packages(tmp_path / "image.qcow2") == frozenset()


# --- its rows -----------------------------------------------------------------------------------

def _built(seconds: float | None, failure_text: str = "", size: int | None = 3 << 20) -> MkosiBuilt:
    result = spawn.Result(("mkosi",), 0 if seconds else 1, failure_text.encode(),
                          seconds or 5.0)
    return MkosiBuilt(result, mkosibench.DISK, size if seconds else None,
                      frozenset({"bash", "systemd", "systemd-resolved"}), 1.5)


def test_rows_beside_dib_with_reference_ratios():
    dib = DibSide(40.0, 10.0, frozenset({"bash", "systemd"}))
    rows = mkosibench.figures("dib vs DIB", "mkosi 14", _built(80.0), _built(20.0), "", dib)
    assert [(f.name, f.value) for f in rows] == [
        ("mkosi 14 cold", 80.0), ("mkosi 14 incremental", 20.0),
        ("dib cold / mkosi cold", 0.5), ("dib warm / mkosi incremental", 0.5)]
    assert all(f.target is None for f in rows)
    assert [f.note for f in rows[2:]] == ["reference", "reference"]
    assert "qcow2" in rows[0].note and "3 MB" in rows[0].note
    assert "3 packages (1 not in dib's image)" in rows[0].note


def test_one_row_with_the_reason_when_it_cannot_build():
    dib = DibSide(40.0, 10.0, frozenset())
    failed = _built(None, "‣ Error: no loop device\n")
    rows = mkosibench.figures("s", "mkosi 14", failed, None, "", dib)
    assert [(f.name, f.value, f.note) for f in rows] == [
        ("mkosi 14", None, "failed (exit 1): Error: no loop device")]
    rows = mkosibench.figures("s", "mkosi", None, None, "mkosi is not installed", dib)
    assert [(f.name, f.value, f.note) for f in rows] == [
        ("mkosi", None, "mkosi is not installed")]


def test_a_failed_incremental_build_keeps_the_cold_row():
    dib = DibSide(40.0, None, frozenset())
    rows = mkosibench.figures("s", "mkosi 14", _built(80.0), _built(None, "E: gone\n"), "", dib)
    assert rows[1].value is None and rows[1].note == "failed (exit 1): E: gone"
    assert rows[3].value is None


# --- the section: build order and --quick ---------------------------------------------------------

class _Recorder:
    """Stands for every builder of the section; records the order of the builds."""

    def __init__(self, order: list[str], name: str) -> None:
        self.order, self.name, self.root = order, name, Path("/nonexistent")

    def cold(self) -> None:
        self.order.append(f"{self.name}: empty caches")

    def build(self, bench, label, packages=()):  # noqa: ANN001 - both interfaces
        self.order.append(label)
        result = spawn.Result((label,), 0, b"", 10.0)
        if label.startswith("mkosi"):
            return MkosiBuilt(result, mkosibench.DISK, 1 << 20, frozenset(packages))
        return Built(result, 1 << 20, frozenset({"bash", "systemd"}))


def _section(tmp_path: Path, monkeypatch, quick: bool) -> tuple[list[str], list]:
    order: list[str] = []
    monkeypatch.setattr(builders, "ours", lambda bench: _Recorder(order, "dib"))
    monkeypatch.setattr(builders, "diskimage_builder", lambda bench: _Recorder(order, "DIB"))
    monkeypatch.setattr(mkosibench, "find", lambda bench, release: _Recorder(order, "mkosi 14"))
    bench = _bench(tmp_path, quick)
    bench.logs.mkdir(parents=True)
    figures, _ = builders.run(bench)
    return order, figures


def test_cold_builds_together_then_warm_builds_together(tmp_path, monkeypatch):
    order, figures = _section(tmp_path, monkeypatch, quick=False)
    assert order == ["DIB: empty caches", "DIB cold", "dib: empty caches", "dib cold",
                     "mkosi 14: empty caches", "mkosi cold",
                     "DIB warm", "dib warm", "mkosi incremental"]
    names = [f.name for f in figures]
    assert "mkosi 14 cold" in names and "dib warm / mkosi incremental" in names


def test_quick_skips_mkosi_like_diskimage_builder(tmp_path, monkeypatch):
    order, figures = _section(tmp_path, monkeypatch, quick=True)
    assert not any(step.startswith(("mkosi", "DIB")) for step in order)
    row = next(f for f in figures if f.name == "mkosi")
    assert (row.value, row.note) == (None, "skipped with --quick")


def test_the_warm_profile_is_always_printed(tmp_path, monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(builders, "ours", lambda bench: _Recorder(order, "dib"))
    bench = _bench(tmp_path, quick=True)
    bench.logs.mkdir(parents=True)
    bench.log("dib-warm").write_text(
        "2026-12-07 09:00:00.000 | tree cache: hit 0123456789abcdef (root.d from the cache, "
        "restored in 0.5 s)\n2026-12-07 09:00:01.000 | ---- phase cleanup.d: 1 script(s)\n")
    _, profiles = builders.run(bench)
    assert profiles["dib warm: from the cache / still ran"][:2] == [
        "from the cache: root.d (restored in 0.5 s, key 0123456789abcdef)",
        "still ran: cleanup.d 0.0 s"]
