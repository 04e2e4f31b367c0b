"""``dib-matrix catalogue check``: every entry against successful logs (false positives)
and failure logs (entries never matched, entries always matching together).

CI fails when a bundled entry matches a bundled successful log. The archive under
``--out`` is untrusted: a log that is a FIFO, a symlink out of its run, a results.json
that is garbage, must cost a warning, never a hang, a traceback or exit 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from matrix.cli import cataloguecli
from matrix.verdict import scoring
from matrix.verdict.catalogue import load_catalogue
from tests.hostile import REPO, TreeWatch, golden_copy, run_cli

CORPUS = REPO / "tests" / "corpus"
CATALOGUE = load_catalogue()
RUN_ID = "20261207-010203-abcd"


def test_no_bundled_entry_matches_a_bundled_successful_log():
    logs = scoring.corpus_logs(CORPUS, "success")
    assert len(logs) >= 18
    found = scoring.false_positives(CATALOGUE, logs)
    assert not found, [f"{f.log.path.name}:{f.line}: {f.rule_id}: {f.text}" for f in found]


def test_the_command_on_the_checkout_is_clean():
    outcome = run_cli("catalogue", "check")
    assert outcome.code == 0, outcome.output
    assert "false positives: 0" in outcome.stdout
    assert "failure logs: " in outcome.stdout


def _corpus(tmp_path: Path, success: str, failures: dict[str, str] | None = None) -> Path:
    corpus = tmp_path / "corpus"
    (corpus / "success").mkdir(parents=True)
    (corpus / "success" / "ok.log").write_text(success)
    for name, text in (failures or {}).items():
        path = corpus / "failures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return corpus


def _check(monkeypatch, corpus: Path, *args: str) -> int:
    monkeypatch.setattr(cataloguecli, "CORPUS", corpus)
    parser = __import__("matrix.cli", fromlist=["build_parser"]).build_parser()
    return cataloguecli.cmd_check(parser.parse_args(["catalogue", "check", *args]))


def test_a_bundled_entry_on_a_bundled_success_log_fails(tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path, "Reading package lists...\nE: Unable to locate package x\ndone\n")
    assert _check(monkeypatch, corpus) == 1
    out = capsys.readouterr().out
    assert f"{corpus}/success/ok.log:2: false positive: package-not-found: " in out


def test_a_users_entry_on_a_success_log_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path, "step 3 done\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: step-failed\n  patterns: ['^step \\d+']\n")
    assert _check(monkeypatch, corpus, "--categories", str(mine)) == 0
    assert "ok.log:1: false positive: step-failed: step 3 done" in capsys.readouterr().out


def test_a_users_replacement_of_a_bundled_entry_is_the_users(tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path, "E: Unable to locate package x\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: package-not-found\n  patterns: ['Unable to locate']\n"
                    "- id: apt-error\n  patterns: ['^never$']\n")
    assert _check(monkeypatch, corpus, "--categories", str(mine)) == 0
    assert "false positive: package-not-found" in capsys.readouterr().out


def test_no_corpus_beside_the_tool_is_said(tmp_path, monkeypatch, capsys):
    assert _check(monkeypatch, tmp_path / "none") == 0
    assert "no corpus beside the tool" in capsys.readouterr().out


def test_failure_logs_stats(tmp_path):
    logs = []
    for name, text in {"a.log": "E: Unable to locate package x\n",
                       "b.log": "E: Unable to locate package y\nNo space left on device\n",
                       "c.log": "nothing known\n"}.items():
        path = tmp_path / name
        path.write_text(text)
        logs.append(scoring.Log(path))
    stats = scoring.failure_stats(CATALOGUE, logs)
    assert stats.logs == 3
    assert "package-not-found" not in stats.never_matched
    assert "kernel-panic" in stats.never_matched
    assert "build-failed" in stats.record_only and "build-failed" not in stats.never_matched
    assert (("apt-error", "package-not-found"), 2) in [
        (tuple(sorted(ids)), count) for ids, count in stats.together]


def test_json_document(tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path, "E: Unable to locate package x\n", {"x/f.log": "Killed\n"})
    assert _check(monkeypatch, corpus, "--format", "json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["successful_logs"] == 1
    assert {fp["entry"] for fp in document["false_positives"]} == {
        "package-not-found", "apt-error"}
    assert document["failure_logs"]["logs"] == 1


# ---- the archive under --out: untrusted --------------------------------------------


def _archive(tmp_path: Path, edit=None) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    run = golden_copy(out / RUN_ID, edit)
    return out, run


def test_false_positives_in_the_archive_name_file_and_line(tmp_path):
    out, run = _archive(tmp_path)
    log = run / "logs" / "debian-bookworm" / "debian-bookworm.log"
    log.write_text("building...\nE: Unable to locate package nosuch\ndone\n")
    watch = TreeWatch(tmp_path)
    outcome = run_cli("catalogue", "check", "--out", out)
    watch.assert_untouched()
    assert outcome.code == 0, outcome.output  # the archive reports, the corpus gates
    assert f"{log}:2: false positive: package-not-found" in outcome.stdout


def test_a_successful_cells_log_scoped_to_its_row(tmp_path):
    out, run = _archive(tmp_path)
    # a tox-only entry does not judge a build row's log
    (run / "logs" / "debian-bookworm" / "debian-bookworm.log").write_text("1 failed in 0.1s\n")
    outcome = run_cli("catalogue", "check", "--out", out)
    assert "tests-failed" not in outcome.stdout


def test_a_fifo_log_does_not_hang_the_check(tmp_path):
    out, run = _archive(tmp_path)
    log = run / "logs" / "debian-bookworm" / "debian-bookworm.log"
    log.unlink()
    os.mkfifo(log)
    outcome = run_cli("catalogue", "check", "--out", out, timeout=20)
    assert outcome.code == 0
    assert "debian-bookworm/debian-bookworm" in outcome.stderr


def test_a_log_symlinked_out_of_its_run_is_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("E: Unable to locate package secret-from-outside\n")
    out, run = _archive(tmp_path)
    log = run / "logs" / "debian-bookworm" / "debian-bookworm.log"
    log.unlink()
    log.symlink_to(secret)
    outcome = run_cli("catalogue", "check", "--out", out)
    assert outcome.code == 0
    assert "secret-from-outside" not in outcome.stdout
    assert "not a file inside the run" in outcome.stderr


def test_a_huge_single_line_log_is_bounded(tmp_path):
    out, run = _archive(tmp_path)
    log = run / "logs" / "debian-bookworm" / "debian-bookworm.log"
    with log.open("wb") as stream:
        stream.write(b"x" * (40 << 20) + b" E: no newline for 40 MiB\n")
    outcome = run_cli("catalogue", "check", "--out", out, timeout=60)
    assert outcome.code == 0


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"cells": "x"}', b"\xff\xfe"])
def test_an_unreadable_run_is_skipped_with_a_warning(tmp_path, garbage):
    out, run = _archive(tmp_path)
    (run / "results.json").write_bytes(garbage)
    outcome = run_cli("catalogue", "check", "--out", out)
    assert outcome.code == 0
    assert "skipped" in outcome.stderr


def test_a_cell_log_path_leaving_the_run_is_refused(tmp_path):
    def edit(document):
        for cell in document["cells"]:
            if cell["state"] == "success" and cell.get("log"):
                cell["log"] = "../../secret.log"

    out, _ = _archive(tmp_path, edit)
    (tmp_path / "secret.log").write_text("E: Unable to locate package secret\n")
    outcome = run_cli("catalogue", "check", "--out", out)
    assert outcome.code == 0
    assert "secret" not in outcome.stdout


@pytest.mark.parametrize("make", ["missing", "file"])
def test_out_that_is_not_a_directory_exits_2(tmp_path, make):
    target = tmp_path / "out"
    if make == "file":
        target.write_text("x")
    outcome = run_cli("catalogue", "check", "--out", target)
    assert outcome.code == 2 and "not a directory of runs" in outcome.stderr


def test_terminal_escapes_in_a_log_are_not_printed(tmp_path):
    out, run = _archive(tmp_path)
    log = run / "logs" / "debian-bookworm" / "debian-bookworm.log"
    log.write_bytes(b"E: Unable to locate package \x1b]0;owned\x07x\x1b[2J\n")
    outcome = run_cli("catalogue", "check", "--out", out)
    assert "\x1b" not in outcome.stdout and "false positive: package-not-found" in outcome.stdout
