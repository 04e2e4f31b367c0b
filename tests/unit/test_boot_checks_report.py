"""A boot row's checks of the running system as the cell's named checks (matrix.run.cells)
and in the reports: results.json round trip, the HTML cell panel and the markdown
summary's "Boot checks" section, with the guest's untrusted words escaped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from dib.bootconsole import BootCheck, CheckStatus
from dib.boottest import BootResult
from matrix.config.diagnostics import ConfigError
from matrix.config.hosts import BootstrapBase, HostDefinition, PackageManager
from matrix.config.targets import BUNDLED_TARGETS_DIR, Target, load_target, load_targets
from matrix.run.cells import boot_checks, boot_reason
from matrix.run.plan import PlannedCell
from reports.html import render_html
from reports.markdown import render_markdown
from results.model import BOOT_CHECK_PREFIX, CellKind, State
from tests.resultfactory import make_cell, make_run

HOSTILE = "<script>alert(1)</script> @here `x` **#1**"


def result(*checks: BootCheck, passed: bool = True) -> BootResult:
    return BootResult(passed=passed, evidence="DIB-BOOT-MARKER-OK", seconds=42.0,
                      seconds_to_marker=35.2, stage="userspace", facts={}, serial_log="l",
                      command=(), checks=checks)


CHECKS = (BootCheck("units", CheckStatus.PASS, "system running, no failed unit"),
          BootCheck("network", CheckStatus.SKIP, "the image configures no network"),
          BootCheck("resolve", CheckStatus.FAIL, HOSTILE))


def test_each_boot_check_is_a_named_check_of_the_cell():
    found = boot_checks(result(*CHECKS), Path("images/h/t.qcow2"))
    assert [(c.name, c.ok) for c in found] == [
        ("boot: units", True), ("boot: network", True), ("boot: resolve", False)]
    assert found[1].detail == "skipped: the image configures no network"
    assert all(c.image == "images/h/t.qcow2" for c in found)


def test_the_success_note_counts_the_checks():
    assert boot_reason(result()) == "marker after 35 s"
    assert boot_reason(result(*CHECKS[:2])) == "marker after 35 s; checks: 1 passed, 1 skipped"


def boot_run():
    checks = list(boot_checks(result(*CHECKS, passed=False), Path("images/h/t.qcow2")))
    cell = make_cell("h", "t:boot", State.FAILED, evidence="boot: name resolution failed: x",
                     checks=checks)
    return make_run([make_cell("h", "hostgen"), cell])


def test_markdown_names_every_boot_check_and_escapes_the_guests_words():
    text = render_markdown(boot_run())
    assert "#### Boot checks (1)" in text
    assert "units passed, network skipped, resolve **failed**" in text
    assert "  - resolve: `<script>alert(1)</script> @here 'x' **#1**`" in text


def test_the_html_cell_panel_shows_the_boot_checks_escaped():
    html = render_html(boot_run())
    assert "boot: units" in html and "boot: resolve" in html
    assert '<td class="result">skipped</td>' in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_build_rows_image_checks_are_not_boot_checks():
    cell = make_cell("h", "t", State.SUCCESS)
    assert render_markdown(make_run([cell])).count("Boot checks") == 0
    assert BOOT_CHECK_PREFIX == "boot: "


def target(tmp_path: Path, extra: str):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nelements: [debian-minimal, vm, boot-checks]\nboot-test: true\n"
                    + extra)
    return load_target(path)


def test_a_target_chooses_its_boot_checks(tmp_path):
    assert target(tmp_path, "").boot_checks is None
    assert target(tmp_path, "boot-checks: all\n").boot_checks is None
    assert target(tmp_path, "boot-checks: none\n").boot_checks == ()
    assert target(tmp_path, "boot-checks: []\n").boot_checks == ()
    assert target(tmp_path, "boot-checks: [units, shutdown, units]\n").boot_checks == (
        "units", "shutdown")


@pytest.mark.parametrize("value", ["[units, nope]", "some", "7", "{units: 1}", "[[units]]"])
def test_an_unknown_boot_check_is_a_config_error_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match="boot-checks") as caught:
        target(tmp_path, f"boot-checks: {value}\n")
    assert "Traceback" not in str(caught.value)


def test_the_bundled_vm_targets_run_every_check():
    targets = load_targets((BUNDLED_TARGETS_DIR,))
    vm = [t for t in targets.values() if t.boot_test]
    assert vm and all("boot-checks" in t.elements and t.boot_checks is None for t in vm)


# ---- the boot row (matrix.run.cells) with a fake boot -------------------------------

HOST = HostDefinition("debian-bookworm", BootstrapBase("bookworm"), PackageManager.APT)


class BootContext:
    """What a boot row reads of its run's context."""

    keys = reusable = None

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.settings = SimpleNamespace(config=SimpleNamespace(boot_timeout=60.0),
                                        run_dir=run_dir)

    def log_path(self, cell):
        return self.run_dir / "logs" / cell.host.name / "boot.log"

    def images_dir(self, host):
        return self.run_dir / "images" / host


def boot_row(tmp_path, monkeypatch, outcome: BootResult, **target):
    from matrix.run import cells

    seen = []

    def fake_boot(opts):
        seen.append(opts)
        return outcome

    monkeypatch.setattr(cells, "run_boot_test", fake_boot)
    monkeypatch.setattr(cells, "mirror_host", lambda: "mirror.example.org")
    vm = Target("t", ("debian-minimal", "vm", "boot-checks"), outputs=("qcow2",),
                boot_test=True, **target)
    images = tmp_path / "images" / HOST.name
    images.mkdir(parents=True)
    (images / "t.qcow2").write_bytes(b"")
    cell = PlannedCell(HOST, "t:boot", CellKind.BOOT, (), vm)
    return cells.CellRunner(BootContext(tmp_path)).execute(cell, 1), seen[0]


def test_the_boot_row_fails_on_a_failed_check_and_records_every_check(tmp_path, monkeypatch):
    failed = result(*CHECKS, passed=False)
    failed = replace(failed, evidence="boot: name resolution failed: x")
    report, opts = boot_row(tmp_path, monkeypatch, failed, boot_checks=("units", "resolve"))
    assert report.state is State.FAILED
    assert report.evidence == ("boot: name resolution failed: x",)
    assert [c.name for c in report.checks] == ["boot: units", "boot: network", "boot: resolve"]
    assert report.checks[0].image == "images/debian-bookworm/t.qcow2"
    assert opts.watch.checks == ("units", "resolve")
    assert opts.resolve == "mirror.example.org" and opts.work_dir == tmp_path
    assert "--checks units,resolve" in report.reproducer
    log = (tmp_path / "logs" / HOST.name / "boot.log").read_text()
    assert "boot check resolve: fail: " in log


def test_the_boot_row_passes_with_its_checks_counted(tmp_path, monkeypatch):
    report, opts = boot_row(tmp_path, monkeypatch, result(*CHECKS[:2]))
    assert report.state is State.SUCCESS
    assert report.reason == "marker after 35 s; checks: 1 passed, 1 skipped"
    assert opts.watch.checks is None
