"""The real-failure corpus (tests/corpus): every log gets its cause, no success log any.

The logs were produced by really provoking each failure (tests/corpus/provoke.py);
nothing here was written by hand. A cell hands the verdict stage more than its log
(a hint such as `timeout`, the free space it measured): index entries carry those
as `hint` and `free_bytes`, exactly as the cell would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dib.bootconsole import replay_log
from matrix.verdict.catalogue import ANY, load_catalogue
from matrix.verdict.classify import Evidence, classify
from matrix.verdict.logscan import lines_of_file

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
INDEX = yaml.safe_load((CORPUS / "index.yaml").read_text(encoding="utf-8"))
CATALOGUE = load_catalogue()
FAILURES = [e for e in INDEX if e.get("id")]
SUCCESSES = [e for e in INDEX if not e.get("id")]


def _row(entry: dict) -> str:
    row = str(entry.get("row") or ANY)
    if entry.get("kind") == "boot" and not row.endswith(":boot"):
        row += ":boot"
    if entry.get("kind") == "hostgen":
        row = "hostgen"
    return row


def verdict_for(entry: dict):
    path = CORPUS / entry["file"]
    row = _row(entry)
    if row.endswith(":boot"):
        console = "\n".join(lines_of_file(path))
        evidence = Evidence(ANY, row, (replay_log(console).evidence,), hint=entry.get("hint"))
    else:
        evidence = Evidence(ANY, row, tuple(entry.get("lines") or ()), log=path,
                            hint=entry.get("hint"), free_bytes=entry.get("free_bytes") or {})
    return classify(evidence, CATALOGUE)


def test_the_corpus_is_big_and_varied():
    assert len(FAILURES) >= 35
    assert len(SUCCESSES) >= 8
    assert len({e["id"] for e in FAILURES}) >= 20
    assert len({e.get("tool") for e in FAILURES}) >= 5
    for entry in INDEX:
        assert (CORPUS / entry["file"]).is_file(), entry["file"]


@pytest.mark.parametrize("entry", FAILURES, ids=[e["file"] for e in FAILURES])
def test_every_corpus_log_gets_its_cause(entry):
    verdict = verdict_for(entry)
    assert verdict.category.id == entry["id"], verdict.evidence


def test_classification_rate_over_the_corpus_is_complete(capsys):
    right = sum(verdict_for(e).category.id == e["id"] for e in FAILURES)
    with capsys.disabled():
        print(f"\ncorpus: {right}/{len(FAILURES)} failure logs named right")
    assert right == len(FAILURES)


@pytest.mark.parametrize("entry", SUCCESSES, ids=[e["file"] for e in SUCCESSES])
def test_no_failure_pattern_matches_a_successful_log(entry):
    """Every line of a successful run, through every entry in scope of its row."""
    path = CORPUS / entry["file"]
    verdict = classify(Evidence(ANY, ANY, log=path), CATALOGUE)
    assert verdict.category.id == "uncategorized", (verdict.category.labels, verdict.evidence)
