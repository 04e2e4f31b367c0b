"""Why did it change: attribution of regressions and fixes, in compare, HTML and markdown."""

from __future__ import annotations

from pathlib import Path

from matrix.cli import main
from reports.attribution import changed_files, package_changes
from reports.compare import compare, render_comparison
from reports.html import render_html
from reports.markdown import code, escape, render_markdown
from results.model import Category, Cell, RunResults, State
from results.store import save
from tests.resultfactory import make_cell, make_run

MANIFEST = Path(__file__).resolve().parent / "golden" / "manifests" / "debian-bookworm-vm.packages"
HOOK = Category("dib-hook-failed", "element growroot: post-install.d/80-growroot exited 1")
PANIC = Category("kernel-panic", "kernel panic")
HOST_A, HOST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
ELEMENTS = {"elements/growroot/post-install.d/80-growroot": "1111111111111111+x",
            "elements/growroot/element-deps": "2222222222222222",
            "elements/base/install.d/10-base": "3333333333333333+x"}


def prov(**changes):
    record = {"host_image": HOST_A, "elements": dict(ELEMENTS), "distro": "debian",
              "suite": "bookworm", "mirror_release_date": "Sat, 11 Jul 2026 10:16:37 UTC",
              "packages": {"libc6": "2.36-9", "bash": "5.2.15-2"}}
    record.update(changes)
    return record


def runs(old_prov, new_prov, new_state=State.FAILED, category=HOOK, evidence=None,
         old_tree=None, new_tree=None, row="vm"):
    old = make_run([make_cell("h", row, provenance=old_prov)], run_id="old")
    new = make_run([make_cell("h", row, new_state, category=category, evidence=evidence,
                              provenance=new_prov)], run_id="new")
    old.provenance = {"dib": old_tree or {"commit": "aaaa", "files": {"dib/build.py": "x"}}}
    new.provenance = {"dib": new_tree or {"commit": "aaaa", "files": {"dib/build.py": "x"}}}
    return old, new


def only_attribution(old, new):
    comparison = compare(old, new)
    assert len(comparison.attributions) == 1
    return next(iter(comparison.attributions.values()))


def test_changed_element_file_of_the_failing_hook_is_the_likely_cause():
    elements = {**ELEMENTS, "elements/growroot/post-install.d/80-growroot": "9999999999999999+x",
                "elements/base/install.d/10-base": "4444444444444444+x"}
    old, new = runs(prov(), prov(elements=elements),
                    old_tree={"commit": "aaaa1111", "files": {}},
                    new_tree={"commit": "bbbb2222", "dirty": True, "files": {}})
    found = only_attribution(old, new)
    assert found.headline == ("elements/growroot/post-install.d/80-growroot changed (in the "
                              "cell's element closure) (likely cause)")
    assert found.factors[1].summary == ("elements/base/install.d/10-base changed (in the cell's "
                                        "element closure)")
    assert found.notes[0] == "dib tree aaaa1111 -> bbbb2222 (with local changes)"


def test_the_hook_dibs_record_names_is_the_likely_cause():
    elements = {**ELEMENTS, "elements/base/install.d/10-base": "4444444444444444+x",
                "elements/growroot/element-deps": "5555555555555555"}
    bootstrap = Category("bootstrap-failed", "bootstrap of the base system failed")
    old, new = runs(prov(), prov(elements=elements, failed_hook={
        "element": "base", "phase": "install.d", "hook": "10-base"}), category=bootstrap,
        evidence="patched")
    found = only_attribution(old, new)
    assert found.headline == ("elements/base/install.d/10-base changed (in the cell's element "
                              "closure) (likely cause)")
    assert found.factors[1].summary.startswith("elements/growroot/element-deps changed")


def test_package_version_change_named_by_the_evidence():
    after = {"libc6": "2.36-10", "bash": "5.2.15-2", "zstd": "1.5"}
    old, new = runs(prov(), prov(packages=after), category=PANIC,
                    evidence="/sbin/init: symbol lookup error: libc6 2.36-10 mismatch")
    found = only_attribution(old, new)
    assert found.headline == "package libc6 2.36-9 -> 2.36-10 (likely cause)"
    assert [f.summary for f in found.factors] == ["package libc6 2.36-9 -> 2.36-10",
                                                  "package + zstd 1.5"]


def test_host_mirror_and_dib_files_are_named():
    old, new = runs(prov(), prov(host_image=HOST_B, mirror_release_date="Sat, 18 Jul 2026"),
                    old_tree={"digest": "d1" * 32, "files": {"dib/build.py": "1"}},
                    new_tree={"digest": "d2" * 32, "files": {"dib/build.py": "2",
                                                            "dib/new.py": "3"}})
    found = only_attribution(old, new)
    summaries = [f.summary for f in found.factors]
    assert summaries == [
        "2 files of the dib package changed",
        f"host image sha256:{'a' * 12} -> sha256:{'b' * 12} (host h rebuilt)",
        "mirror's bookworm Release: Sat, 11 Jul 2026 10:16:37 UTC -> Sat, 18 Jul 2026"]
    assert found.factors[0].details == ("dib/build.py changed", "dib/new.py added")
    assert found.notes[0].startswith("dib tree digest d1d1d1d1d1d1 -> digest d2d2d2d2d2d2")


def test_nothing_differs_unknowns_and_older_runs():
    old, new = runs(prov(), prov(mirror_release_date=None, packages=None))
    found = only_attribution(old, new)
    assert found.factors == ()
    assert found.notes == (
        "package versions not compared: no package list in this run (a build that failed "
        "before writing its image has none)",
        "mirror's bookworm Release date unknown in this run",
        "no recorded input of this cell differs (host image, dib and element files, mirror "
        "date, packages): a flaky cell, or a cause outside what dib-matrix records")
    old, new = runs({}, prov())
    assert only_attribution(old, new).headline.startswith(
        "no provenance recorded in the baseline")


def test_a_fix_is_attributed_too_and_a_boot_row_takes_its_builds_packages():
    old = make_run([make_cell("h", "vm", provenance=prov()),
                    make_cell("h", "vm:boot", State.FAILED, category=PANIC,
                              provenance={"host_image": HOST_A})], run_id="old")
    new = make_run([make_cell("h", "vm", provenance=prov(packages={"libc6": "2.36-10",
                                                                   "bash": "5.2.15-2"})),
                    make_cell("h", "vm:boot", provenance={"host_image": HOST_A})], run_id="new")
    found = compare(old, new).attributions["h.vm:boot"]
    assert found.headline == "package libc6 2.36-9 -> 2.36-10"


def test_file_and_package_diffs():
    assert changed_files({"a": "1+x", "b": "2", "c": "3"}, {"a": "1", "b": "5", "d": "4"}) == [
        "a mode changed (no longer executable)", "b changed", "c removed", "d added"]
    assert package_changes({"a": "1", "b": "2"}, {"b": "3", "c": "4"}) == [
        "- a 1", "b 2 -> 3", "+ c 4"]


def test_many_changes_are_bounded():
    after = {f"elements/e{i}/install.d/10-x": "0" for i in range(30)}
    old, new = runs(prov(elements={}), prov(elements=after), category=PANIC)
    (factor,) = [f for f in only_attribution(old, new).factors if f.kind == "element"]
    assert factor.summary.startswith("30 files of the cell's element closure changed (e0, e1,")
    assert factor.details[-1] == "and 22 more"


def test_compare_text_and_html_show_why():
    elements = {**ELEMENTS, "elements/growroot/post-install.d/80-growroot": "9" * 16 + "+x"}
    old, new = runs(prov(), prov(elements=elements, packages={"libc6": "<b>x</b>"}))
    text = render_comparison(compare(old, new))
    assert "why (what differs between the two runs for the cell):" in text
    assert ("regression h.vm: failed: element growroot: post-install.d/80-growroot exited 1"
            in text)
    assert ("  - elements/growroot/post-install.d/80-growroot changed (in the cell's element "
            "closure) (likely cause)") in text
    html = render_html(new, baseline=old)
    assert "why (what differs)" in html
    assert "elements/growroot/post-install.d/80-growroot changed" in html
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    # The cell's own panel says it too.
    assert ("regression (baseline: success); why: elements/growroot/post-install.d/80-growroot "
            "changed") in html


def test_markdown_escapes_untrusted_text():
    assert escape("<img src=x> @alice #12 *b* [l](u)") == (
        "&lt;img src=x&gt; @&#8203;alice \\#12 \\*b\\* \\[l\\]\\(u\\)")
    assert code("a `b` c\nd") == "`a 'b' c d`"
    assert code("") == "` `"


def test_markdown_regressions_first_then_fixes_then_counts():
    elements = {**ELEMENTS, "elements/growroot/post-install.d/80-growroot": "9" * 16 + "+x"}
    old = make_run([make_cell("h", "vm", provenance=prov()),
                    make_cell("h", "t", State.FAILED, category=HOOK, provenance=prov()),
                    make_cell("h", "same")], run_id="old")
    new = make_run([make_cell("h", "vm", State.FAILED, category=HOOK,
                              evidence="80-growroot: growpart: <script>", provenance=prov(
                                  elements=elements)),
                    make_cell("h", "t", provenance=prov(elements=elements)),
                    make_cell("h", "same")], run_id="new")
    text = render_markdown(new, old)
    assert text.startswith("### dib-matrix run `new`: 1 regressions (1 voting), 1 fixes "
                           "against `old`\n")
    regressions, fixes, counts = (text.index("#### Regressions (1)"),
                                  text.index("#### Fixes (1)"), text.index("#### Counts"))
    assert regressions < fixes < counts
    assert ("- `h.vm`: success \u2192 failed: element growroot: post\\-install\\.d/80\\-growroot "
            "exited 1") in text
    assert "  - evidence: `80-growroot: growpart: <script>`" in text
    assert ("  - why: elements/growroot/post\\-install\\.d/80\\-growroot changed \\(in the "
            "cell's element closure\\) \\(likely cause\\)") in text
    assert "| success | 2 |" in text and "| failed | 1 |" in text
    assert "<script>" not in text.replace("`80-growroot: growpart: <script>`", "")


def test_markdown_without_baseline_lists_voting_failures_and_is_bounded():
    cells = [make_cell("h", f"t{i}", State.FAILED, category=HOOK, evidence="x" * 5000)
             for i in range(40)]
    cells.append(make_cell("h", "allowed", State.ALLOWED_FAILURE, voting=False))
    text = render_markdown(make_run(cells, run_id="r"))
    assert text.startswith("### dib-matrix run `r`: 40 voting failures")
    assert "\u2026 and 20 more (see the HTML report)" in text
    assert len(text) < 20000


def recorded_run(tmp_path: Path, run_id: str, manifest_text: str, state: State) -> Path:
    """A run directory as a run writes it: the image's manifest beside it, the cell's
    provenance recorded from it by the run's own recorder."""
    from matrix.run.provenance import read_packages

    run_dir = tmp_path / run_id
    manifest = run_dir / "images" / "h" / "debian-bookworm-vm.packages"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(manifest_text)
    build = make_cell("h", "debian-bookworm-vm", provenance=prov(
        packages=read_packages(manifest), packages_manifest=str(manifest.relative_to(run_dir))))
    boot = make_cell("h", "debian-bookworm-vm:boot", state,
                     category=None if state is State.SUCCESS else PANIC,
                     evidence=None if state is State.SUCCESS else
                     "Kernel panic - not syncing: Attempted to kill init!",
                     provenance={"host_image": HOST_A})
    run = make_run([build, boot], run_id=run_id)
    run.provenance = {"dib": {"commit": "aaaa", "files": {}}}
    save(run, run_dir)
    return run_dir


def test_real_manifests_one_edited_name_the_package(tmp_path, capsys):
    real = MANIFEST.read_text()
    edited = real.replace("libc6 2.36-9+deb12u14 amd64", "libc6 2.36-9+deb12u15 amd64")
    assert edited != real
    old_dir = recorded_run(tmp_path, "old", real, State.SUCCESS)
    new_dir = recorded_run(tmp_path, "new", edited, State.FAILED)
    assert main(["compare", str(old_dir), str(new_dir)]) == 1
    out = capsys.readouterr().out
    assert "regression h.debian-bookworm-vm:boot: failed: kernel panic" in out
    assert "  - package libc6 2.36-9+deb12u14 -> 2.36-9+deb12u15" in out
    assert main(["report", str(new_dir), "--format", "markdown", "--baseline",
                 str(old_dir)]) == 0
    markdown = capsys.readouterr().out
    assert "  - why: package libc6 2\\.36\\-9\\+deb12u14 \\-&gt; 2\\.36\\-9\\+deb12u15" in markdown


def test_cells_without_record_round_trip(tmp_path):
    run = make_run([make_cell("h", "t")], run_id="r")
    save(run, tmp_path)
    assert '"provenance"' not in (tmp_path / "results.json").read_text()
    run.cells[0].provenance = prov()
    run.provenance = {"dib": {"commit": None}}
    save(run, tmp_path)
    from results.reader import read_results

    back = read_results(tmp_path)
    assert back.cells[0].provenance == prov() and back.provenance == run.provenance
    assert isinstance(back.cells[0], Cell) and isinstance(back, RunResults)


def test_a_run_with_provenance_validates_against_the_schema(tmp_path):
    import json

    import jsonschema

    from reports.jsonreport import load_schema

    run = make_run([make_cell("h", "vm", provenance=prov(failed_hook={
        "element": "growroot", "phase": "post-install.d", "hook": "80-growroot"})),
        make_cell("h", "skipped", State.SKIPPED)], run_id="r")
    run.provenance = {"dib": {"commit": None, "dirty": None, "digest": "d" * 64,
                              "files": {"dib/build.py": "1" * 16}},
                      "mirrors": {"http://m/debian": {"bookworm": {"date": None,
                                                                   "error": "timed out"}}}}
    save(run, tmp_path)
    document = json.loads((tmp_path / "results.json").read_text())
    jsonschema.Draft202012Validator(load_schema()).validate(document)
    assert "provenance" not in document["cells"][1]
