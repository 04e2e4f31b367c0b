"""The archive keeps what an investigation's variants need: each last-good's inputs in
last-good.json, and its dib tree once per digest (``results.treestore``).

Hostile classes covered: a digest that is no digest (a path, upper case, too short) never
becomes a path; a tree edited after the run read it is kept as read (not as it is now);
a kept tree tampered with afterwards no longer passes for its digest; a last-good.json
whose inputs are not ids (paths, control characters) is refused; what a killed writer
left is swept; trees no last-good names are collected, named ones never.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from matrix.config.dibtree import DibTree
from matrix.run.archiving import archive_run
from results import lastgood, treestore
from results.archive import OutDir
from results.lastgood import LastGoodError
from results.paths import UnsafePath
from tests.archivefactory import stored_run


def make_tree(root: Path, hook: str = "exit 0\n") -> DibTree:
    (root / "dib").mkdir(parents=True)
    (root / "dib" / "__main__.py").write_text("print('dib')\n")
    hook_path = root / "elements" / "base" / "install.d" / "10-hook"
    hook_path.parent.mkdir(parents=True)
    hook_path.write_text(hook)
    hook_path.chmod(0o755)
    (root / "elements" / "base" / "README.rst").write_text("base\n")
    return DibTree.read(root)


def test_a_kept_tree_reads_back_as_the_same_tree_linked_where_unchanged(tmp_path):
    tree = make_tree(tmp_path / "tree")
    out = OutDir(tmp_path / "out")
    kept = treestore.keep(out, tree.digest, tree.path, tree.files)
    assert kept == treestore.stored(out, tree.digest)
    again = DibTree.read(kept)
    assert again.digest == tree.digest
    hook = kept / "elements" / "base" / "install.d" / "10-hook"
    assert os.access(hook, os.X_OK)
    assert os.stat(hook).st_ino == os.stat(tree.path / "elements/base/install.d/10-hook").st_ino
    assert treestore.kept(out) == [tree.digest]
    assert treestore.keep(out, tree.digest, tree.path, tree.files) == kept  # once


def test_a_tree_edited_after_the_run_read_it_is_kept_as_read(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree.path / "elements/base/install.d/10-hook").write_text("exit 1\n")  # edited since
    (tree.path / "elements/base/README.rst").unlink()
    kept = treestore.keep(OutDir(tmp_path / "out"), tree.digest, tree.path, tree.files)
    assert (kept / "elements/base/install.d/10-hook").read_text() == "exit 0\n"
    assert (kept / "elements/base/README.rst").read_text() == "base\n"
    assert DibTree.read(kept).digest == tree.digest


@pytest.mark.parametrize("digest", ["../../etc", "", "A" * 64, "abc", "a" * 64 + "/x",
                                    "a" * 64 + "\n", None, 5])
def test_a_digest_that_is_no_digest_never_becomes_a_path(tmp_path, digest):
    out = OutDir(tmp_path / "out")
    assert treestore.stored(out, digest) is None
    with pytest.raises(UnsafePath):
        treestore.tree_path(out, digest)


def test_collect_removes_unnamed_trees_and_leftovers_only(tmp_path):
    out = OutDir(tmp_path / "out")
    one = make_tree(tmp_path / "one")
    two = make_tree(tmp_path / "two", hook="exit 2\n")
    for tree in (one, two):
        treestore.keep(out, tree.digest, tree.path, tree.files)
    leftover = treestore.trees_dir(out) / ".new-dead"
    leftover.mkdir()
    assert treestore.collect(out, {one.digest}) == [two.digest]
    assert treestore.kept(out) == [one.digest]
    assert not leftover.exists()


def test_a_run_keeps_its_tree_for_its_last_good_builds_and_forgets_it_once_unnamed(tmp_path):
    out_dir = tmp_path / "out"
    tree = make_tree(tmp_path / "tree")
    run = stored_run(out_dir, 1)
    results = run.load()
    results.dib_tree = tree.to_json()
    for cell in results.cells:
        cell.provenance = {"host_image": "sha256:" + "c" * 64}
    results.repository = {"recorded": results.run_id}
    run.save(results)
    archive_run(out_dir, results, None, tree=tree)
    out = OutDir(out_dir)
    assert treestore.kept(out) == [tree.digest]
    build = lastgood.read(out, "h1", "t1")
    assert build.inputs.tree == tree.digest
    assert build.inputs.host_image == "sha256:" + "c" * 64
    assert build.inputs.snapshot == results.run_id
    # hostgen is never investigated: nothing of it kept
    assert lastgood.read(out, "h1", "hostgen").inputs == lastgood.GoodInputs()
    # The next night builds with another tree: the first one is named by nothing.
    other = make_tree(tmp_path / "other", hook="exit 3\n")
    run2 = stored_run(out_dir, 2)
    results2 = run2.load()
    results2.dib_tree = other.to_json()
    run2.save(results2)
    archive_run(out_dir, results2, None, tree=other)
    assert treestore.kept(out) == [other.digest]


def test_a_run_with_no_success_keeps_no_tree(tmp_path):
    out_dir = tmp_path / "out"
    tree = make_tree(tmp_path / "tree")
    states = {f"{h}.{r}": lastgood.State.FAILED for h in ("h1", "h2")
              for r in ("hostgen", "t1", "t2")}
    run = stored_run(out_dir, 1, states=states)
    results = run.load()
    results.dib_tree = tree.to_json()
    archive_run(out_dir, results, None, tree=tree)
    assert treestore.kept(OutDir(out_dir)) == []


@pytest.mark.parametrize(("name", "value"), [
    ("tree", "../../../etc"), ("tree", "ABC"), ("tree", 7),
    ("host_image", "sha256:abc\nrm -rf /"), ("host_image", "x" * 500), ("host_image", ["a"]),
    ("snapshot", "../other"), ("snapshot", "a b"),
])
def test_a_last_good_record_whose_inputs_are_not_ids_is_refused(tmp_path, name, value):
    out_dir = tmp_path / "out"
    run = stored_run(out_dir, 1)
    lastgood.record_run(OutDir(out_dir), run, run.load(), warn=pytest.fail)
    record = OutDir(out_dir).last_good("h1", "t1") / lastgood.RECORD
    document = json.loads(record.read_text())
    document[name] = value
    record.write_text(json.dumps(document))
    with pytest.raises(LastGoodError):
        lastgood.read(OutDir(out_dir), "h1", "t1")


def test_an_older_record_without_inputs_still_reads(tmp_path):
    out_dir = tmp_path / "out"
    run = stored_run(out_dir, 1)
    lastgood.record_run(OutDir(out_dir), run, run.load(), warn=pytest.fail)
    record = OutDir(out_dir).last_good("h1", "t1") / lastgood.RECORD
    document = json.loads(record.read_text())
    for name in lastgood.INPUT_NAMES:
        document.pop(name)
    record.write_text(json.dumps(document))
    good = lastgood.read(OutDir(out_dir), "h1", "t1")
    assert good.inputs == lastgood.GoodInputs()


def test_an_investigations_variants_are_no_last_good_and_never_reused(tmp_path):
    from matrix.run.reuse import index_previous
    from results.model import Cell, CellKind, State

    out_dir = tmp_path / "out"
    run = stored_run(out_dir, 1, states={"h1.t1": State.FAILED})
    results = run.load()
    results.cells.append(Cell("h1", "t1--inv-rerun", CellKind.BUILD, State.SUCCESS,
                              voting=False, key="key-of-a-variant",
                              investigation={"of": "h1.t1", "variant": "rerun"}))
    run.save(results)
    recorded = lastgood.record_run(OutDir(out_dir), run, results, warn=pytest.fail)
    assert "h1.t1--inv-rerun" not in {g.cell_id for g in recorded}
    assert lastgood.read(OutDir(out_dir), "h1", "t1--inv-rerun") is None
    assert "key-of-a-variant" not in index_previous(out_dir, "another-run")
