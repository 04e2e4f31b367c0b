"""``dib-matrix report``: regenerate any report from results.json."""

from __future__ import annotations

import json

from junitparser import JUnitXml

from matrix.cli import main
from reports.gate import EXIT_OK, EXIT_USAGE


def test_report_rewrites_every_file_and_prints_the_table(tmp_path, capsys, all_states_dir):
    run_dir = all_states_dir
    assert main(["report", str(run_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "|target \\ host    |debian-bookworm |" in out
    for name in ("report.txt", "report.html", "junit.xml"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "report.txt").read_text() in out


def test_report_formats_to_stdout(tmp_path, capsys, all_states, all_states_dir):
    run_dir = all_states_dir
    assert main(["report", str(run_dir), "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["run_id"] == all_states.run_id
    assert main(["report", str(run_dir / "results.json"), "--format", "html"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert main(["report", str(run_dir), "--format", "text", "--transpose"]) == EXIT_OK
    assert "|host \\ target" in capsys.readouterr().out
    assert not (run_dir / "report.txt").exists()  # --format only prints


def test_report_output_file_and_baseline(tmp_path, capsys, all_states, all_states_dir):
    run_dir = all_states_dir
    target = tmp_path / "out.xml"
    assert main(["report", str(run_dir), "--format", "junit", "-o", str(target)]) == EXIT_OK
    assert JUnitXml.fromfile(str(target)).tests == len(all_states.cells)
    assert main(["report", str(run_dir), "--format", "text", "--baseline", str(run_dir)]) == 0
    assert "0 regressions (0 voting)" in capsys.readouterr().out


def test_report_usage_errors(tmp_path, capsys, all_states_dir):
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    assert "no results.json" in capsys.readouterr().err
    run_dir = all_states_dir
    assert main(["report", str(run_dir), "-o", str(tmp_path / "x")]) == EXIT_USAGE
    assert main(["report", str(run_dir), "--baseline", str(tmp_path / "none")]) == EXIT_USAGE
