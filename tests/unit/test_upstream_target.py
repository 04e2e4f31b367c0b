"""Targets with diskimage-builder-elements: the key, plan's element check, the cell's
mount and ELEMENTS_PATH, the reuse key, and the pinned tree's fetch under a lock."""

import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from matrix.config import upstreamdib
from matrix.config.diagnostics import ConfigError
from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix, resolve_matrix_path
from matrix.config.targets import element_issues, load_target, load_targets, upstream_notes
from matrix.containers import engine
from matrix.run import runner
from matrix.run.cells import CellRunner, reproducer
from matrix.run.context import HostRecord, HostRecords, RunContext, RunSettings
from matrix.run.plan import make_plan
from matrix.run.reuse import KeyMaker
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = "debian-bookworm-dib-upstream"
TARGET = """\
name: t
elements: [debian-minimal]
diskimage-builder-elements: {value}
env:
  DIB_RELEASE: bookworm
"""


def target_file(tmp_path, value, name="t"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TARGET.format(value=value).replace("name: t", f"name: {name}"))
    return path


def issues_of(path):
    with pytest.raises(ConfigError) as err:
        load_target(path)
    return [str(i) for i in err.value.issues]


# -- the key ----------------------------------------------------------------------


def test_a_pinned_version_is_read():
    target = load_target(REPO / "targets" / f"{UPSTREAM}.yaml")
    assert target.upstream_elements == "3.43.0"
    assert target.elements == ("debian-minimal",)
    assert load_target(REPO / "targets" / "debian-bookworm.yaml").upstream_elements is None


def test_a_version_without_a_pin_is_refused_naming_the_known_ones(tmp_path):
    path = target_file(tmp_path, '"3.42.0"')
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:3: diskimage-builder-elements: ")
    assert "diskimage-builder 3.42.0 has no pinned wheel sha256; known: 3.43.0" in issue


@pytest.mark.parametrize("value", ["3.43", "[3.43.0]", "true"])
def test_a_version_must_be_a_quoted_string(tmp_path, value):
    path = target_file(tmp_path, value)
    (issue,) = issues_of(path)
    assert f"{path}:3: diskimage-builder-elements: must be a quoted version string" in issue
    assert "known: 3.43.0" in issue


def test_upstream_targets_are_nightly_only():
    default = load_matrix(resolve_matrix_path(None))
    nightly = load_matrix(resolve_matrix_path("nightly"))
    names = {f"{UPSTREAM}", f"{UPSTREAM}-vm"}
    assert names <= {t.name for t in nightly.targets}
    assert not names & {t.name for t in default.targets}
    vm = load_targets()[f"{UPSTREAM}-vm"]
    assert vm.boot_test and vm.outputs == ("qcow2",) and vm.upstream_elements == "3.43.0"


# -- plan: element check against the cached tree ----------------------------------


def fake_cache(tmp_path, version="3.43.0", elements=("only-upstream",)):
    """A cache holding an extracted tree of ``version`` (stamped with its pin)."""
    cache = tmp_path / "cache"
    tree = upstreamdib.tree_path(cache, version)
    for name in elements:
        (tree / upstreamdib.ELEMENTS_SUBDIR / name).mkdir(parents=True)
    (tree / upstreamdib.STAMP).write_text(upstreamdib.PINS[version] + "\n")
    return cache


def test_elements_resolve_against_upstreams_tree_then_dibs(tmp_path):
    cache = fake_cache(tmp_path)
    ok = load_target(target_file(tmp_path, '"3.43.0"'))
    ok = ok.__class__(**{**ok.__dict__, "elements": ("debian-minimal", "only-upstream")})
    assert element_issues([ok], REPO / "elements", cache) == []
    # The same elements without the key: dib's tree alone has no only-upstream.
    plain = ok.__class__(**{**ok.__dict__, "upstream_elements": None})
    (issue,) = element_issues([plain], REPO / "elements", cache)
    assert "only-upstream" in issue.message


def test_a_missing_element_is_reported_when_the_tree_is_cached(tmp_path):
    cache = fake_cache(tmp_path)
    path = target_file(tmp_path, '"3.43.0"')
    path.write_text(path.read_text().replace("[debian-minimal]", "[debian-minimal, nosuch]"))
    (issue,) = element_issues([load_target(path)], REPO / "elements", cache)
    assert issue.file == path and issue.line == 2 and "nosuch" in issue.message
    (note,) = upstream_notes([load_target(path)], cache)
    assert note.startswith("diskimage-builder 3.43.0 elements (for t): cached in ")


def test_without_the_cached_tree_plan_skips_the_check_and_says_it_will_fetch(tmp_path):
    path = target_file(tmp_path, '"3.43.0"')
    path.write_text(path.read_text().replace("[debian-minimal]", "[nosuch]"))
    empty = tmp_path / "empty-cache"
    assert element_issues([load_target(path)], REPO / "elements", empty) == []
    (note,) = upstream_notes([load_target(path)], empty)
    assert "not cached; the run fetches the pinned wheel before cells start" in note
    assert not empty.exists()  # plan fetches nothing


def test_a_tree_with_another_wheels_stamp_is_not_taken_as_cached(tmp_path):
    cache = fake_cache(tmp_path)
    stamp = upstreamdib.tree_path(cache, "3.43.0") / upstreamdib.STAMP
    stamp.write_text("0" * 64 + "\n")
    assert upstreamdib.cached_tree(cache, "3.43.0") is None


# -- the cell: mount, ELEMENTS_PATH, mirror, reproducer ----------------------------


def plan_of(tmp_path, *targets):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"hosts: [debian-bookworm]\ntargets: [{', '.join(targets)}]\n")
    return make_plan(load_matrix(matrix)).by_id()


def context(tmp_path, **changes):
    matrix = tmp_path / "settings.yaml"
    matrix.write_text("hosts: [debian-bookworm]\ntargets: [debian-bookworm]\ntimeout: 1m\n")
    values = dict(config=load_matrix(matrix), run_id="r", run_dir=tmp_path / "run",
                  dib_tree=DibTree.read(REPO), mirror="http://mirror.invalid/debian")
    values.update(changes)
    hosts = HostRecords({"debian-bookworm": HostRecord("dib-matrix/host-debian-bookworm:x")})
    return RunContext(RunSettings(**values), client=None, hosts=hosts)


def test_the_cell_mounts_the_tree_read_only_and_puts_it_first(tmp_path):
    tree = tmp_path / "elements"
    tree.mkdir()
    cell = plan_of(tmp_path, UPSTREAM)[f"debian-bookworm.{UPSTREAM}"]
    ctx = context(tmp_path, upstream_elements={"3.43.0": tree},
                  security_mirror="http://mirror.invalid/debian-security")
    spec = CellRunner(ctx).spec(cell)
    assert spec.upstream_elements == tree
    assert spec.environment["ELEMENTS_PATH"] == engine.UPSTREAM_ELEMENTS_MOUNT
    assert spec.environment["DIB_DISTRIBUTION_MIRROR"] == "http://mirror.invalid/debian"
    assert spec.environment["DIB_DEBIAN_SECURITY_MIRROR"] == \
        "http://mirror.invalid/debian-security"
    mount = [m for m in engine.cell_mounts(spec) if m["Target"] == engine.UPSTREAM_ELEMENTS_MOUNT]
    assert mount and mount[0]["Source"] == str(tree.resolve()) and mount[0]["ReadOnly"]
    line = reproducer(spec)
    assert f"-v {tree.resolve()}:/opt/dib-upstream/elements:ro" in line
    assert "ELEMENTS_PATH=/opt/dib-upstream/elements" in line
    assert ctx.elements_dirs(cell) == [tree, REPO / "elements"]


def test_a_targets_own_elements_path_comes_after_upstreams(tmp_path):
    tree = tmp_path / "elements"
    tree.mkdir()
    cell = plan_of(tmp_path, UPSTREAM)[f"debian-bookworm.{UPSTREAM}"]
    cell = cell.__class__(**{**cell.__dict__, "env": cell.env + (("ELEMENTS_PATH", "/x"),)})
    spec = CellRunner(context(tmp_path, upstream_elements={"3.43.0": tree})).spec(cell)
    assert spec.environment["ELEMENTS_PATH"] == f"{engine.UPSTREAM_ELEMENTS_MOUNT}:/x"
    assert "DIB_DEBIAN_SECURITY_MIRROR" not in spec.environment  # none known: upstream's


def test_other_cells_get_no_mount_and_no_elements_path(tmp_path):
    cell = plan_of(tmp_path, "debian-bookworm")["debian-bookworm.debian-bookworm"]
    spec = CellRunner(context(tmp_path, security_mirror="http://m.invalid/s")).spec(cell)
    assert spec.upstream_elements is None
    assert "ELEMENTS_PATH" not in spec.environment
    assert "DIB_DEBIAN_SECURITY_MIRROR" not in spec.environment
    assert "/opt/dib-upstream" not in reproducer(spec)


# -- the run's preparation ---------------------------------------------------------


def test_a_failed_fetch_gives_its_cells_a_named_cause(tmp_path, monkeypatch):
    def no_network(*_args, **_kwargs):
        raise upstreamdib.UpstreamError("pip download of diskimage-builder==3.43.0 failed: "
                                        "ERROR: No matching distribution found")

    monkeypatch.setattr(upstreamdib, "fetch_wheel", no_network)
    trees, failures = runner.prepare_upstream(["3.43.0"], tmp_path / "cache")
    assert trees == {}
    verdict = classify_lines([failures["3.43.0"]], "debian-bookworm", UPSTREAM,
                             load_catalogue())
    assert verdict.category.id == "upstream-elements-unavailable"
    assert verdict.category.legend == "diskimage-builder 3.43.0 elements unavailable"
    assert "No matching distribution found" in verdict.evidence


def test_only_the_plans_build_cells_ask_for_a_tree(tmp_path):
    plan = make_plan(load_matrix(_matrix(tmp_path, [UPSTREAM, f"{UPSTREAM}-vm",
                                                    "debian-bookworm"])))
    assert runner.upstream_versions(plan) == ["3.43.0"]
    plan = make_plan(load_matrix(_matrix(tmp_path, ["debian-bookworm"])))
    assert runner.upstream_versions(plan) == []


def _matrix(tmp_path, targets):
    path = tmp_path / "m.yaml"
    path.write_text(f"hosts: [debian-bookworm]\ntargets: [{', '.join(targets)}]\n")
    return path


# -- reuse key ---------------------------------------------------------------------


def tree_copy(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "elements", tree / "elements")
    return tree


def fake_upstream(tmp_path):
    """An upstream tree whose debian-minimal shadows dib's (dib's base stays in)."""
    up = tmp_path / "up"
    (up / "debian-minimal").mkdir(parents=True)
    (up / "debian-minimal" / "element-provides").write_text("operating-system\n")
    return up


def test_reuse_key_names_the_upstream_release_and_its_sha(tmp_path, monkeypatch):
    tree = tree_copy(tmp_path)
    plan = plan_of(tmp_path, UPSTREAM)
    cell = plan[f"debian-bookworm.{UPSTREAM}"]
    plain = cell.__class__(**{**cell.__dict__, "target": cell.target.__class__(
        **{**cell.target.__dict__, "upstream_elements": None})})
    up = fake_upstream(tmp_path)
    keys = KeyMaker(DibTree.read(tree), {"3.43.0": up})
    upstream_key = keys.key(cell, "sha256:img")
    assert upstream_key != keys.key(plain, "sha256:img")  # a dib-elements success is not it
    monkeypatch.setitem(upstreamdib.PINS, "3.43.0", "f" * 64)
    assert KeyMaker(DibTree.read(tree), {"3.43.0": up}).key(cell, "sha256:img") != upstream_key


def test_reuse_key_follows_dibs_elements_only_where_upstream_does_not_shadow(tmp_path):
    tree = tree_copy(tmp_path)
    up = fake_upstream(tmp_path)
    cell = plan_of(tmp_path, UPSTREAM)[f"debian-bookworm.{UPSTREAM}"]
    before = KeyMaker(DibTree.read(tree), {"3.43.0": up}).key(cell, "sha256:img")
    shadowed = tree / "elements/debian-minimal/README.md"
    shadowed.write_text(shadowed.read_text() + "patched\n")
    assert KeyMaker(DibTree.read(tree), {"3.43.0": up}).key(cell, "sha256:img") == before
    base = next(p for p in (tree / "elements/base").rglob("*") if p.is_file())
    base.write_text(base.read_text() + "\n# patched\n")
    assert KeyMaker(DibTree.read(tree), {"3.43.0": up}).key(cell, "sha256:img") != before


def test_reuse_key_without_the_tree_counts_every_dib_element(tmp_path):
    tree = tree_copy(tmp_path)
    cell = plan_of(tmp_path, UPSTREAM)[f"debian-bookworm.{UPSTREAM}"]
    keys = KeyMaker(DibTree.read(tree))
    assert keys.closure_parts(cell.target.elements, "3.43.0") == ("elements",)
    assert keys.key(cell, "sha256:img")


# -- the pinned tree: fetched once, under a lock -----------------------------------


def fake_wheel(cache, version):
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / upstreamdib.wheel_name(version)
    with zipfile.ZipFile(wheel, "w") as archive:
        info = zipfile.ZipInfo("diskimage_builder/elements/e/install.d/10-hook")
        info.external_attr = 0o100755 << 16
        archive.writestr(info, "#!/bin/sh\n")
    return wheel


def test_two_at_once_extract_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    wheel = fake_wheel(cache, "9.9.9")
    monkeypatch.setitem(upstreamdib.PINS, "9.9.9", upstreamdib.sha256_of(wheel))
    calls = []
    real = upstreamdib.extract_wheel
    gate = threading.Barrier(2)

    def slow_extract(wheel, dest):
        calls.append(dest)
        threading.Event().wait(0.2)  # the other thread now waits on the lock
        return real(wheel, dest)

    monkeypatch.setattr(upstreamdib, "extract_wheel", slow_extract)
    found = []

    def fetch():
        gate.wait()
        found.append(upstreamdib.elements_dir(cache, version="9.9.9"))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert found[0] == found[1] == upstreamdib.tree_path(cache, "9.9.9") / \
        upstreamdib.ELEMENTS_SUBDIR
    assert (found[0] / "e/install.d/10-hook").stat().st_mode & 0o111
    assert upstreamdib.cached_elements_dir(cache, "9.9.9") == found[0]


def test_an_unpinned_version_is_never_fetched(tmp_path):
    with pytest.raises(upstreamdib.UpstreamError, match="no pinned sha256; known: 3.43.0"):
        upstreamdib.upstream_tree(tmp_path / "cache", version="1.0.0")
    assert not (tmp_path / "cache").exists()


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fake_wheel(cache, "9.9.9")
    monkeypatch.setitem(upstreamdib.PINS, "9.9.9", "0" * 64)
    with pytest.raises(upstreamdib.UpstreamError, match="sha256"):
        upstreamdib.upstream_tree(cache, offline=True, version="9.9.9")
    assert upstreamdib.cached_tree(cache, "9.9.9") is None
