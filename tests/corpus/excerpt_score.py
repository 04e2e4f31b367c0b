"""How often the excerpt of a failure holds the line that proves its cause.

For every failure log of the corpus (``index.yaml``) with an ``evidence`` line, the
excerpt (``matrix.verdict.excerpt``) is computed against a baseline of successful
corpus logs, and the score counts the logs whose evidence line is among the top K
lines (K = 1, 3, 5).

The baseline stands in for "the successful logs of the same row" a run has: logs of
the same kind of row written by the same program. A build row's log is dib's (a
matrix cell's log or ``python -m dib``), upstream diskimage-builder's or
debootstrap's, told by the file name; hostgen, check and boot rows each have their
own. A failure of a command run by hand in a container (apt-get, mount, losetup) or
a preflight line has no successful twin in the corpus: it is scored without a
baseline, on error words and position alone.

    .venv/bin/python tests/corpus/excerpt_score.py [-v]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from matrix.verdict.excerpt import Baseline, excerpt_lines  # noqa: E402

# File-name prefix of a build row's log -> the program that wrote it.
WRITERS = (("dic-", "diskimage-builder"), ("debootstrap-", "debootstrap"),
           ("dib-", "dib"), ("matrix-", "dib"))
NON_BUILD_FAMILIES = {"hostgen", "check", "boot"}


def family(entry: dict) -> str | None:
    """Which successful logs are the baseline of ``entry``'s log (None: none)."""
    if entry["kind"] in NON_BUILD_FAMILIES:
        return entry["kind"]
    if entry["kind"] != "build":
        return None  # a preflight verdict is one line, not a log
    name = Path(entry["file"]).name
    return next((writer for prefix, writer in WRITERS if name.startswith(prefix)), None)


@dataclass
class Score:
    k: int
    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        total = len(self.hits) + len(self.misses)
        return len(self.hits) / total if total else 0.0


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def success_logs(index: list[dict]) -> dict[str, list[list[str]]]:
    """The lines of each successful log, by family."""
    found: dict[str, list[list[str]]] = {}
    for entry in index:
        name = family(entry)
        if entry["id"] is None and name is not None:
            found.setdefault(name, []).append(read_lines(HERE / entry["file"]))
    return found


def baseline_of(logs: list[list[str]]) -> Baseline:
    baseline = Baseline()
    for lines in logs:
        baseline.add_log(lines)
    return baseline


def evidence_numbers(lines: list[str], evidence: str) -> set[int]:
    return {number for number, line in enumerate(lines, 1) if line.strip() == evidence}


def measure(ks: tuple[int, ...] = (1, 3, 5), only_longer_than: int = 0,
            bury: int = 0) -> dict[int, Score]:
    """The score for each K over the corpus (logs of more than ``only_longer_than``
    lines). With ``bury``: each failure log that has successful logs of its family is
    followed by the last ``bury`` lines of one of them (a build that goes on after its
    error: cleanup, teardown), measured against the family's other successful logs
    (all of them when it has only one); the others are left out."""
    index = yaml.safe_load((HERE / "index.yaml").read_text(encoding="utf-8"))
    logs = success_logs(index)
    baselines = {name: baseline_of(found) for name, found in logs.items()}
    scores = {k: Score(k) for k in ks}
    for entry in index:
        if entry["id"] is None or not entry.get("evidence"):
            continue
        lines = read_lines(HERE / entry["file"])
        if len(lines) <= only_longer_than:
            continue
        wanted = evidence_numbers(lines, entry["evidence"].strip())
        name = family(entry) or ""
        baseline = baselines.get(name, Baseline())
        if bury:
            if name not in logs:
                continue
            lines = lines + logs[name][0][-bury:]
            baseline = baseline_of(logs[name][1:] or logs[name])
        for k in ks:
            shown = {line.line for line in excerpt_lines(enumerate(lines, 1), baseline, k)}
            (scores[k].hits if shown & wanted else scores[k].misses).append(entry["file"])
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="name the misses")
    parser.add_argument("--longer-than", type=int, default=0, metavar="N",
                        help="only logs of more than N lines")
    parser.add_argument("--bury", type=int, default=0, metavar="N",
                        help="follow each failure by the last N lines of a successful log")
    args = parser.parse_args()
    for k, score in measure(only_longer_than=args.longer_than, bury=args.bury).items():
        total = len(score.hits) + len(score.misses)
        print(f"top-{k}: {len(score.hits)}/{total} = {score.rate:.1%}")
        if args.verbose:
            for miss in score.misses:
                print(f"  miss: {miss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
