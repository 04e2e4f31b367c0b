"""junit.xml, read back with junitparser: suites per host, cases per cell, outcomes."""

from __future__ import annotations

from junitparser import Error, Failure, JUnitXml, Skipped

from reports.junit import render_junit
from results.model import Category, State
from tests.resultfactory import category, make_cell, make_run


def read_back(results, tmp_path) -> JUnitXml:
    path = tmp_path / "junit.xml"
    path.write_text(render_junit(results), encoding="utf-8")
    return JUnitXml.fromfile(str(path))


def cases(xml: JUnitXml) -> dict[str, object]:
    return {f"{case.classname}.{case.name}": case for suite in xml for case in suite}


def test_one_suite_per_host_one_case_per_cell(tmp_path, all_states):
    results = all_states
    xml = read_back(results, tmp_path)
    assert [suite.name for suite in xml] == results.hosts
    assert sorted(cases(xml)) == sorted(c.id for c in results.cells)
    for suite in xml:
        assert suite.tests == sum(1 for c in results.cells if c.host == suite.name)
    assert xml.tests == len(results.cells)


def test_outcomes_by_state(tmp_path, all_states):
    by_id = cases(read_back(all_states, tmp_path))

    def result(cell_id):
        return by_id[cell_id].result

    forky = result("debian-bookworm.debian-forky")
    assert isinstance(forky[0], Failure)
    assert forky[0].type == "no-such-script"
    assert forky[0].message == "E: No such script: /usr/share/debootstrap/scripts/forky"
    assert result("debian-bookworm.tox") == []  # passed
    assert result("debian-bookworm.debian-trixie") == []  # passed on retry is a pass ...
    assert "passed only on attempt 2" in by_id["debian-bookworm.debian-trixie"].system_out
    unc = result("debian-trixie.tox")[0]
    assert isinstance(unc, Failure) and unc.type == "uncategorized"
    assert "<script>" in unc.message and "\x1b" not in unc.message  # text, cleaned
    timeout = result("ubuntu-noble.tox")[0]
    assert isinstance(timeout, Failure) and timeout.type == "timeout"
    error = result("ubuntu-noble.debian-bookworm")[0]
    assert isinstance(error, Error) and error.type == "engine-error"
    skipped = result("fedora-43.tox")[0]
    assert isinstance(skipped, Skipped) and skipped.type == "missing-dependency"
    excluded = result("debian-trixie.centos-stream9")[0]
    assert isinstance(excluded, Skipped) and excluded.type == "excluded"
    assert excluded.message.startswith("excluded: centos-stream9 needs dnf")
    allowed = result("debian-bookworm.centos-stream9")[0]
    assert isinstance(allowed, Skipped) and allowed.type == "dnf-not-available"
    assert allowed.message.startswith("allowed failure (non-voting): ")


def test_totals(tmp_path, all_states):
    xml = read_back(all_states, tmp_path)
    # failures: 8 failed + 1 timeout; skipped: 9 skipped + 2 allowed failures + 2 excluded
    assert (xml.failures, xml.errors, xml.skipped) == (9, 1, 13)
    bookworm = next(s for s in xml if s.name == "debian-bookworm")
    assert (bookworm.failures, bookworm.errors, bookworm.skipped) == (3, 0, 2)


def test_control_characters_and_escapes_stay_parseable(tmp_path):
    nasty = "\x1b[31mred\x1b[0m \x00nul \x07bell <tag> & \"quote\" \ud800"
    results = make_run([
        make_cell("h", "t", State.FAILED, evidence=nasty,
                  category=Category("x", f"legend {nasty}")),
        make_cell("h", "u", State.ERROR, evidence=nasty, category=category("engine-error")),
        make_cell("h", "v", State.PENDING),
    ])
    by_id = cases(read_back(results, tmp_path))
    message = by_id["h.t"].result[0].message
    assert "red" in message and "<tag> & \"quote\"" in message and "\x1b" not in message
    assert isinstance(by_id["h.v"].result[0], Skipped)
    assert by_id["h.v"].result[0].type == "pending"
