"""Runs marked to be kept: retention never removes them (``dib-matrix keep RUN``).

A mark is a small JSON file ``<out>/.dib-matrix/keep/<run-id>.json`` (run id, reason,
when); its *presence* is what keeps the run, so a mark that cannot be read still
keeps it (a doubt never costs a run). Marks live beside the runs, not in them: a
run directory stays what the run wrote.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from results.archive import OutDir, Warn, warn_on_stderr
from results.names import is_run_id
from results.reader import clip, error_line, printable
from results.safefile import read_text
from results.store import write_atomically

REASON_LIMIT = 300  # characters of a reason kept
MARK_LIMIT = 16 << 10  # bytes of a mark file read
SUFFIX = ".json"


@dataclass(frozen=True)
class KeepMark:
    run_id: str
    reason: str
    at: str  # when the mark was made (UTC, ISO 8601); "" when unknown


class NotARun(ValueError):
    """A run to mark that is not a run of this output directory."""


def mark(out: OutDir, run_id: str, reason: str = "") -> KeepMark:
    """Mark ``run_id`` (a run directory with a results.json under ``out``) as kept."""
    run = out.run(run_id)  # UnsafePath unless it is a run id
    if not run.path.is_dir() or run.path.is_symlink() or not run.results_file.exists():
        raise NotARun(f"no run {clip(run_id)} in {out.path}")
    kept = KeepMark(run_id, one_line(reason, REASON_LIMIT),
                    dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    with out.locked():
        out.keep_dir.mkdir(exist_ok=True)
        write_atomically(out.keep_mark(run_id), json.dumps(
            {"run_id": kept.run_id, "reason": kept.reason, "at": kept.at}, indent=1) + "\n")
    return kept


def unmark(out: OutDir, run_id: str) -> bool:
    """Drop ``run_id``'s mark; whether there was one."""
    path = out.keep_mark(run_id)
    with out.locked():
        if not path.exists() and not path.is_symlink():
            return False
        path.unlink()
    return True


def marks(out: OutDir, warn: Warn = warn_on_stderr) -> dict[str, KeepMark]:
    """Every kept run by id. A mark that cannot be read keeps its run all the same
    (said once); a file whose name is not ``<run-id>.json`` is not a mark."""
    try:
        directory = out.keep_dir
        names = sorted(child.name for child in directory.iterdir()) if directory.is_dir() else []
    except OSError:
        return {}
    found = {}
    for name in names:
        run_id = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
        if not is_run_id(run_id):
            continue
        found[run_id] = _read(out, run_id, warn)
    return found


def one_line(text: str, limit: int) -> str:
    """Untrusted text on one line: control and format characters escaped, bounded."""
    flat = " ".join(printable(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _read(out: OutDir, run_id: str, warn: Warn) -> KeepMark:
    path = out.keep_mark(run_id)
    try:
        data = json.loads(read_text(path, MARK_LIMIT))
        reason, at = data.get("reason", ""), data.get("at", "")
        if not isinstance(reason, str) or not isinstance(at, str):
            raise ValueError("reason and at must be text")
    except (OSError, ValueError, AttributeError) as err:
        shown = error_line(err) if isinstance(err, OSError) else f"{path}: {err}"
        warn(f"keep mark {one_line(shown, 300)}: unreadable; run {run_id} is kept all the same")
        return KeepMark(run_id, "(unreadable mark)", "")
    return KeepMark(run_id, one_line(reason, REASON_LIMIT), one_line(at, 40))
