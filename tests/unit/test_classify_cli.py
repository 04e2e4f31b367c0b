"""dib-matrix classify: id, legend and evidence of a log; plan checks category files."""

import json

from matrix.cli import main


def test_classify_names_the_cause_and_its_evidence(tmp_path, capsys):
    log = tmp_path / "cell.log"
    log.write_text("I: Retrieving Release\nE: No such script: /usr/share/debootstrap/scripts/x\n")
    assert main(["classify", str(log), "--row", "debian-x"]) == 0
    out = capsys.readouterr().out
    assert "id:       no-such-script" in out
    assert "legend:   No such script: /usr/share/debootstrap/scripts/x" in out
    assert "evidence: E: No such script: /usr/share/debootstrap/scripts/x" in out


def test_classify_json_and_uncategorized_exit_1(tmp_path, capsys):
    log = tmp_path / "cell.log"
    log.write_text("nothing to see\n")
    assert main(["classify", str(log), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == "uncategorized" and data["evidence"] == "nothing to see"


def test_classify_tries_a_users_entry(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: flaky-proxy\n  legend: 'proxy said {code}'\n  priority: 99\n"
                    "  patterns: ['proxy error (?P<code>\\d+)']\n")
    log = tmp_path / "cell.log"
    log.write_text("E: Unable to locate package x\nproxy error 502\n")
    assert main(["classify", str(log), "--categories", str(mine)]) == 0
    out = capsys.readouterr().out
    assert "legend:   proxy said 502" in out and "also:     package-not-found" in out


def test_classify_reads_a_boot_console_through_the_boot_watcher(tmp_path, capsys):
    log = tmp_path / "serial.log"
    log.write_text("SeaBIOS (version 1.16)\nBooting from Hard Disk...\nBoot failed: not a bootable"
                   " disk\n")
    assert main(["classify", str(log), "--row", "vm:boot"]) == 0
    assert "id:       no-bootloader" in capsys.readouterr().out


def test_bad_input_exits_2_naming_the_file(tmp_path, capsys):
    assert main(["classify", str(tmp_path / "missing.log")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  patterns: ['(a)\\1']\n")
    log = tmp_path / "cell.log"
    log.write_text("x\n")
    assert main(["classify", str(log), "--categories", str(bad)]) == 2
    assert "bad.yaml:2: [0].patterns[0]: bad regex" in capsys.readouterr().err


def test_plan_checks_the_category_files_run_would_load(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: huge\n  legend: '{path:>99999999999}'\n  patterns: [x]\n")
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: m\nhosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"
                      "categories: [bad.yaml]\n")
    assert main(["plan", str(matrix)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:2: [0].legend:" in err and "Traceback" not in err


def test_plan_refuses_a_target_whose_elements_do_not_resolve(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("name: bad\nelements: [debian-minimal, no-such-elem]\n"
                                       "env:\n  DIB_RELEASE: bookworm\n")
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: m\nhosts: [debian-bookworm]\ntargets: [bad.yaml]\nchecks: []\n")
    assert main(["plan", str(matrix)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:2: elements: element 'no-such-elem' not found" in err
