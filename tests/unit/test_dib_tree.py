"""matrix.config.dibtree: the dib tree is one value, made once per command.

What the value is: one digest of the files cells see (and sub-digests of parts from the
same records), the git commit and dirtiness of a real checkout (no other repository's
commit, nothing in the checkout written), the files as they were when it was read.

Where it is made: once by ``run`` (and ``plan --dib-tree``), with the resumed run's
results.json read once and passed down; shard marks and re-runs take the same value.

Hostile trees (a FIFO, a socket, a link out of the tree or to a device, a link to a
directory or to nothing, a file that cannot be read, a tree nested or sized past its
bounds; a resumed run naming a relative path, a NUL, a terminal escape, or no tree, or a
tree with a link out) are refused with exit 2 and one line naming the file
and where the path came from, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from matrix.config import dibtree
from matrix.config.dibtree import PARTS, DibTree, DibTreeError, bundled_tree
from matrix.config.matrixfile import load_matrix
from matrix.run.plan import make_plan
from results.archive import OutDir
from results.model import Cell, RunResults, State
from tests.hostile import REPO, TreeWatch, golden_copy, run_cli
from tests.unit.test_hostile_inputs import refused

MATRIX = "name: m\nhosts: [debian-bookworm]\ntargets: [debian-bookworm]\nchecks: [tox]\n"
GOLDEN_RUN = "20250601T020000Z-a1b2c3"  # the golden run's id: its directory's name
git_missing = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def make_tree(root: Path, real_elements: bool = False) -> Path:
    """A small dib tree (or one with this checkout's elements, which targets resolve in)."""
    (root / "dib").mkdir(parents=True)
    (root / "dib" / "__main__.py").write_text("print('dib')\n")
    (root / "dib" / "__pycache__").mkdir()
    (root / "dib" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    if real_elements:
        shutil.copytree(REPO / "elements", root / "elements",
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        hooks = root / "elements" / "base" / "install.d"
        hooks.mkdir(parents=True)
        (root / "elements" / "base" / "element-deps").write_text("")
        (hooks / "10-hook").write_text("#!/bin/sh\necho base\n")
        (hooks / "10-hook").chmod(0o755)
    (root / "tox.ini").write_text("[tox]\n")
    (root / "README.md").write_text("not part of what cells see\n")
    return root


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t",
                           "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false",
                           *args], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def committed(root: Path) -> str:
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tree")
    return git(root, "rev-parse", "HEAD")


# ---- one digest, from one reading --------------------------------------------------


def test_one_digest_follows_the_files_cells_see_and_nothing_else(tmp_path):
    root = make_tree(tmp_path / "tree")
    first = DibTree.read(root)
    assert first.parts == ("tox.ini", "dib", "elements")
    assert "dib/__pycache__/x.pyc" not in first.files and "README.md" not in first.files
    (root / "README.md").write_text("edited\n")  # outside the parts
    (root / "dib" / "__pycache__" / "y.pyc").write_bytes(b"\1")
    os.utime(root / "tox.ini", (0, 0))  # times are not content
    assert DibTree.read(root).digest == first.digest
    (root / "elements" / "base" / "element-deps").write_text("other\n")
    assert DibTree.read(root).digest != first.digest


def test_sub_digests_are_the_same_function_over_fewer_files(tmp_path):
    root = make_tree(tmp_path / "tree")
    first = DibTree.read(root)
    assert first.digest_of(PARTS) == first.digest == dibtree.digest_files(first.files)
    (root / "elements" / "base" / "install.d" / "10-hook").write_text("#!/bin/sh\nexit 1\n")
    patched = DibTree.read(root)
    assert patched.digest_of(["dib"]) == first.digest_of(["dib"])  # dib's part: unchanged
    assert patched.digest_of(["elements/base"]) != first.digest_of(["elements/base"])
    assert patched.digest_of(["elements/bas"]) == first.digest_of([])  # whole names only


def test_a_mode_counts_only_as_the_owners_x_bit(tmp_path):
    root = make_tree(tmp_path / "tree")
    hook = root / "elements" / "base" / "install.d" / "10-hook"
    first = DibTree.read(root)
    assert first.files["elements/base/install.d/10-hook"].mode == 0o755
    hook.chmod(0o775)  # another umask: the same tree
    (root / "tox.ini").chmod(0o664)
    assert DibTree.read(root).digest == first.digest
    hook.chmod(0o655)
    assert DibTree.read(root).digest != first.digest


def test_the_value_keeps_the_files_as_they_were_when_read(tmp_path):
    root = make_tree(tmp_path / "tree")
    tree = DibTree.read(root)
    (root / "dib" / "__main__.py").write_text("print('edited during the run')\n")
    assert tree.contents()["dib/__main__.py"] == b"print('dib')\n"
    assert tree.to_json() == {"path": str(root.resolve()), "commit": None, "dirty": None,
                              "digest": tree.digest}
    assert "print" not in repr(tree)  # file contents stay out of messages


# ---- git ---------------------------------------------------------------------------


@git_missing
def test_commit_and_dirty_come_from_the_checkout(tmp_path):
    root = make_tree(tmp_path / "tree")
    head = committed(root)
    tree = DibTree.read(root)
    assert (tree.commit, tree.dirty) == (head, False)
    hook = root / "elements" / "base" / "install.d" / "10-hook"
    hook.write_text("#!/bin/sh\nexit 1\n")
    assert (DibTree.read(root).commit, DibTree.read(root).dirty) == (head, True)
    git(root, "checkout", "-q", "--", ".")
    assert DibTree.read(root).dirty is False
    hook.chmod(0o644)  # the x bit is what git records
    assert DibTree.read(root).dirty is True
    hook.chmod(0o755)
    (root / "elements" / "base" / "new-file").write_text("untracked, but cells see it\n")
    assert DibTree.read(root).dirty is True
    (root / "elements" / "base" / "new-file").unlink()
    (root / "notes.txt").write_text("untracked outside the parts\n")
    assert DibTree.read(root).dirty is False


@git_missing
def test_a_tree_inside_another_repository_gets_no_commit(tmp_path):
    outer = tmp_path / "home"
    outer.mkdir()
    (outer / "dotfile").write_text("x\n")
    committed(outer)
    tree = DibTree.read(make_tree(outer / ".cache" / "tree"))  # not tracked by that repo
    assert (tree.commit, tree.dirty) == (None, None)


@git_missing
def test_a_tree_in_a_subdirectory_of_its_repository_gets_its_commit(tmp_path):
    repo = tmp_path / "repo"
    make_tree(repo / "vendor" / "dib-matrix")
    head = committed(repo)
    tree = DibTree.read(repo / "vendor" / "dib-matrix")
    assert (tree.commit, tree.dirty) == (head, False)


@git_missing
def test_reading_a_checkout_writes_nothing_in_it(tmp_path):
    root = make_tree(tmp_path / "tree")
    committed(root)
    os.utime(root / "tox.ini")  # stat data newer than the index: status would rewrite it
    watch = TreeWatch(root)
    DibTree.read(root)
    watch.assert_untouched()


# ---- bounds and the installed tree ----------------------------------------------------


def test_a_tree_past_its_bounds_is_refused(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "tree")
    monkeypatch.setattr(dibtree, "MAX_TREE_BYTES", 16)
    with pytest.raises(DibTreeError, match="MiB in"):
        DibTree.read(root)


def test_an_installed_tree_is_assembled_once_with_the_digest_it_reads_as(tmp_path, monkeypatch):
    """The wheel's parts sit inside its packages; assembled, they read as the same tree."""
    site = tmp_path / "site"
    make_tree(site / "pkg")  # stands for the installed packages' files
    shutil.move(str(site / "pkg" / "elements"), str(site / "pkg" / "dib" / "elements"))
    places = {"dib": site / "pkg" / "dib", "elements": site / "pkg" / "dib" / "elements",
              "tox.ini": site / "pkg" / "dib" / "selftest-tox.ini"}
    shutil.move(str(site / "pkg" / "tox.ini"), str(places["tox.ini"]))
    monkeypatch.setattr(dibtree.bundled, "installed", lambda: True)
    monkeypatch.setattr(dibtree.bundled, "path",
                        lambda name: places.get(name, site / "absent" / name))
    tree = bundled_tree(tmp_path / "cache")
    assert sorted(tree.files) == ["dib/__main__.py", "elements/base/element-deps",
                                  "elements/base/install.d/10-hook", "tox.ini"]
    assert bundled_tree(tmp_path / "cache").path == tree.path  # assembled once
    assert DibTree.read(tree.path).digest == tree.digest
    assert os.access(tree.elements / "base" / "install.d" / "10-hook", os.X_OK)


# ---- made once per command -------------------------------------------------------------


class Counted:
    """How often the tree's files were read, git asked, and results.json read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from matrix.cli import runcli

        self.reads = self.git = self.results = 0
        self.requests: list = []
        read_parts, run, read_results = dibtree.read_parts, dibtree.spawn.run, runcli.read_results

        def counted_read(*args, **kwargs):
            self.reads += 1
            return read_parts(*args, **kwargs)

        def counted_run(argv, **kwargs):
            self.git += argv[0] == "git"
            return run(argv, **kwargs)

        def counted_results(path):
            self.results += 1
            return read_results(path)

        def execute(request, client, on_start=None, observer=None):
            self.requests.append(request)
            raise KeyboardInterrupt  # stop before anything runs

        monkeypatch.setattr(dibtree, "read_parts", counted_read)
        monkeypatch.setattr(dibtree.spawn, "run", counted_run)
        monkeypatch.setattr(runcli, "read_results", counted_results)
        monkeypatch.setattr(runcli, "execute", execute)
        monkeypatch.setattr(runcli.engine, "connect", lambda **kwargs: object())
        monkeypatch.setattr(runcli.signal, "signal", lambda *args: None)


def run_in_process(*argv: str) -> int:
    from matrix.cli import runcli

    parser = argparse.ArgumentParser()
    runcli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["run", *argv, "--quiet"])
    log = logging.getLogger("dib-matrix")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    try:
        return args.func(args)
    finally:
        log.handlers[:], log.propagate = handlers, propagate
        log.setLevel(level)


@pytest.fixture
def counted(monkeypatch) -> Counted:
    return Counted(monkeypatch)


def test_a_shard_run_makes_the_tree_once_and_marks_it_with_that_value(tmp_path, counted):
    root = make_tree(tmp_path / "tree", real_elements=True)
    (tmp_path / "m.yaml").write_text(MATRIX)
    code = run_in_process(str(tmp_path / "m.yaml"), "--dib-tree", str(root), "--shard", "1/1",
                          "--out", str(tmp_path / "out"), "--no-package-cache")
    assert code == 130  # the stand-in for execute stopped it
    [request] = counted.requests
    assert request.dib_tree.path == root.resolve()
    assert request.shard["dib_tree_digest"] == request.dib_tree.digest
    assert (counted.reads, counted.git) == (1, 1)  # not a checkout: git asked once


def test_a_resumed_rerun_reads_its_run_once_and_passes_it_down(tmp_path, counted):
    root = make_tree(tmp_path / "tree", real_elements=True)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    tree = DibTree.read(root)
    plan = make_plan(load_matrix(matrix))
    results = RunResults("20260101-000000-abcd", str(matrix), ["debian-bookworm"],
                         list(plan.rows), dib_tree=tree.to_json())
    results.cells = [Cell(c.host.name, c.row, c.kind, State.SUCCESS, attempts=1)
                     for c in plan.cells]
    run_dir = OutDir(tmp_path / "out").new_run(results.run_id)
    run_dir.save(results)
    counted.reads = 0
    code = run_in_process("--resume", str(run_dir.path), "--cells", "*.debian-bookworm",
                          "--no-package-cache")
    assert code == 130
    [request] = counted.requests
    assert counted.results == 1 and counted.reads == 1
    assert request.resume.run_dir == run_dir.path.resolve()
    cell = request.resume.results.cell("debian-bookworm", "debian-bookworm")
    assert cell.state is State.PENDING  # the re-run's reset, on the object passed down
    assert run_dir.load().cell("debian-bookworm", "debian-bookworm").state is State.PENDING
    assert request.dib_tree.digest == tree.digest  # the tree the run recorded


def test_a_resumed_run_says_when_its_tree_changed_since_it_started(tmp_path, caplog):
    from matrix.cli import runcli
    from results.archive import StoredRun

    root = make_tree(tmp_path / "tree")
    started = RunResults("20260101-000000-abcd", "m.yaml", [], [],
                         dib_tree=DibTree.read(root).to_json())
    resumed = StoredRun(tmp_path / started.run_id, started)
    log = logging.getLogger("dib-matrix")
    log.addHandler(caplog.handler)
    try:
        runcli._read_tree(root, "the dib tree of run r", resumed)
        assert "changed since" not in caplog.text
        (root / "dib" / "__main__.py").write_text("print('edited')\n")
        runcli._read_tree(root, "the dib tree of run r", resumed)
    finally:
        log.removeHandler(caplog.handler)
    assert f"the dib tree {root.resolve()} changed since run {started.run_id}" in caplog.text


# ---- hostile trees through the command line ----------------------------------------------


def _fifo(root: Path, name: str) -> None:
    os.mkfifo(root / name)


def _socket(root: Path, name: str) -> None:
    os.mknod(root / name, 0o600 | stat.S_IFSOCK)  # what bind() leaves, without binding


def _deep(root: Path, name: str, levels: int) -> None:
    path = root / name
    for _ in range(levels):
        path = path / "d"
        path.mkdir(parents=True)
    (path / "f").write_text("")


def _link(root: Path, name: str, target: str | Path) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).symlink_to(target)


HOSTILE_TREES = {
    "a FIFO in dib": (lambda root, outside: _fifo(root, "dib/helper.py"),
                      ["dib/helper.py", "a FIFO"]),
    "a FIFO in the tox row's tests": (
        lambda root, outside: (root / "tests/unit/dib").mkdir(parents=True)
        or _fifo(root, "tests/unit/dib/test_x.py"), ["tests/unit/dib/test_x.py", "a FIFO"]),
    "a socket": (lambda root, outside: _socket(root, "dib/control"),
                 ["dib/control", "not a regular file (a socket)"]),
    "nested past any tree's depth": (lambda root, outside: _deep(root, "dib/deep", 200),
                                     ["dib/deep/d/d/d", "nested deeper than 64 directories"]),
    "a link out of the tree": (lambda root, outside: _link(root, "elements/base/leak", outside),
                               ["elements/base/leak", "a link out of the tree"]),
    "a part that is a link out": (lambda root, outside: (root / "tox.ini").unlink()
                                  or _link(root, "tox.ini", outside),
                                  ["tox.ini", "a link out of the tree"]),
    "a link to a device": (lambda root, outside: _link(root, "dib/zero", "/dev/zero"),
                           ["dib/zero", "a link out of the tree"]),
    "a link to a directory": (lambda root, outside: _link(root, "elements/alias", "base"),
                              ["elements/alias", "a link to a directory"]),
    "a link to nothing": (lambda root, outside: _link(root, "dib/gone.py", "missing.py"),
                          ["dib/gone.py", "a link to missing.py"]),
}


@pytest.mark.parametrize("verb", ["plan", "run"])
@pytest.mark.parametrize("case", list(HOSTILE_TREES))
def test_a_hostile_tree_is_refused_before_anything_is_written(case, verb, tmp_path):
    make_hostile, words = HOSTILE_TREES[case]
    root = make_tree(tmp_path / "tree", real_elements=True)
    outside = tmp_path / "secret"
    outside.write_text("a file of this machine\n")
    make_hostile(root, outside)
    (tmp_path / "m.yaml").write_text(MATRIX)
    watch = TreeWatch(tmp_path)
    outcome = run_cli(verb, tmp_path / "m.yaml", "--dib-tree", root, cwd=tmp_path)
    refused(outcome, f"--dib-tree {root.resolve()}", *words)
    watch.assert_untouched()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_is_refused(tmp_path):
    root = make_tree(tmp_path / "tree", real_elements=True)
    (root / "dib" / "secret.py").write_text("")
    (root / "dib" / "secret.py").chmod(0)
    (tmp_path / "m.yaml").write_text(MATRIX)
    refused(run_cli("plan", tmp_path / "m.yaml", "--dib-tree", root, cwd=tmp_path),
            "dib/secret.py", "Permission denied")


@pytest.mark.parametrize("given, words", [
    ("missing", ["no dib/ package and elements/ directory there"]),
    ("m.yaml", ["no dib/ package and elements/ directory there"]),
    ("loop", ["a symlink loop"]),
])
def test_a_path_that_is_no_tree_is_refused(given, words, tmp_path):
    (tmp_path / "m.yaml").write_text(MATRIX)
    (tmp_path / "loop").symlink_to("loop")
    refused(run_cli("run", tmp_path / "m.yaml", "--dib-tree", tmp_path / given, cwd=tmp_path),
            "--dib-tree", *words)


@pytest.mark.parametrize("recorded, words", [
    ("tree", ["is recorded as 'tree', not an absolute path"]),  # the cwd holds a "tree"
    ("/no/such/tree", ["/no/such/tree: no dib/ package"]),
    ("/", ["/: no dib/ package"]),
    ("/tmp/a\u0000b", ["NUL"]),
    ("/tmp/\u001b[2Jx", ["\\x1b[2Jx"]),  # a terminal escape is shown, never acted on
])
def test_a_resumed_run_naming_a_bad_tree_is_refused(recorded, words, tmp_path):
    make_tree(tmp_path / "tree", real_elements=True)

    def edit(document):
        document["matrix"] = str(REPO / document["matrix"])  # found from any directory
        document["dib_tree"]["path"] = recorded

    run_dir = golden_copy(tmp_path / "out" / GOLDEN_RUN, edit)
    watch = TreeWatch(tmp_path)
    outcome = run_cli("run", "--resume", run_dir, cwd=tmp_path)
    line = refused(outcome, f"the dib tree of run {GOLDEN_RUN}", "--dib-tree DIR", *words)
    assert "\x1b" not in line
    watch.assert_untouched()


def test_a_resumed_run_with_a_link_out_in_its_tree_is_refused(tmp_path):
    root = make_tree(tmp_path / "tree", real_elements=True)
    _link(root, "elements/base/leak", "/etc/hostname")

    def edit(document):
        document["dib_tree"]["path"] = str(root)

    run_dir = golden_copy(tmp_path / "out" / GOLDEN_RUN, edit)
    outcome = run_cli("run", "--resume", run_dir, cwd=REPO)
    refused(outcome, f"the dib tree of run {GOLDEN_RUN} {root.resolve()}", "elements/base/leak",
            "a link out of the tree")
