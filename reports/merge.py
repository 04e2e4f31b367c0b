"""Merge the run directories of a sharded run into one run directory.

Each part is a run of ``dib-matrix run MATRIX --shard I/N``: its results.json says
which shard it is and carries the whole plan (``RunResults.shard``). A merge
checks that the parts agree (same matrix content hash, same dib tree content,
same shard count and assignment), that no shard is given twice and no host's
column is in two parts, and writes one run directory: results.json with every
cell of the matrix (a missing shard's cells stay ``pending`` with the reason),
report.txt/html and junit.xml, each part's logs and images, and each part's own
results.json and run.log under ``parts/shard-I-of-N/``.

Images are hard-linked from the parts when they are on the same filesystem, else
copied (``RunResults.shard['files']`` says which); logs are copied (a resumed or
re-run cell of the merged run may append to its log); symlinks in a part are never
followed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from reports import write_all
from results.model import Cell, CellKind, RunResults, load, save


class MergeError(ValueError):
    """Parts that cannot be merged (not shards, another matrix, a duplicate shard, ...)."""


@dataclass
class Part:
    path: Path
    results: RunResults

    @property
    def mark(self) -> dict:
        return self.results.shard

    @property
    def index(self) -> int:
        return int(self.mark["index"])


@dataclass
class MergeOutcome:
    results: RunResults
    run_dir: Path
    missing: list[int] = field(default_factory=list)  # shard numbers not given
    files: str = "hardlink"  # or "copy", or "hardlink+copy"


def read_part(path: Path) -> Part:
    try:
        results = load(path)
    except FileNotFoundError as err:
        raise MergeError(f"{path}: no results.json (a run directory of run --shard I/N)") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MergeError(f"{path}: cannot read results: {err}") from err
    mark = results.shard
    if mark.get("kind") != "part":
        what = "a merged run" if mark.get("kind") == "merged" else "not a shard's run"
        raise MergeError(f"{path}: {what} (merge takes the run directories of "
                         "run --shard I/N)")
    for key in ("index", "count", "matrix_hash", "hosts", "plan"):
        if key not in mark:
            raise MergeError(f"{path}: shard mark without {key!r}")
    run_dir = path if path.is_dir() else path.parent
    return Part(run_dir, results)


def _agree(parts: list[Part], key: str, what: str) -> str:
    values = {str(p.mark.get(key)) for p in parts}
    if len(values) > 1:
        listing = "; ".join(f"{p.path}: {str(p.mark.get(key))[:16]}" for p in parts)
        raise MergeError(f"the parts come from different {what} ({listing})")
    return values.pop()


def check(parts: list[Part]) -> tuple[int, list[int], dict[str, int]]:
    """(shard count, missing shard numbers, host -> shard) of parts that fit together."""
    if not parts:
        raise MergeError("no parts to merge")
    _agree(parts, "matrix_hash", "matrices (matrix content hash)")
    _agree(parts, "dib_tree_digest", "dib trees (content digest)")
    count = int(_agree(parts, "count", "shard counts"))
    seen: dict[int, Path] = {}
    for part in parts:
        if part.index in seen:
            raise MergeError(f"shard {part.index}/{count} is given twice: {seen[part.index]} "
                             f"and {part.path}")
        seen[part.index] = part.path
    assignment: dict[str, int] = {}
    for part in parts:
        for host, index in part.mark["plan"].get("assignment", {}).items():
            if assignment.setdefault(host, int(index)) != int(index):
                raise MergeError(f"the parts were split differently: host {host} is in shard "
                                 f"{assignment[host]} for one part and {index} for another "
                                 "(run every shard with the same --shard-plan, or none)")
    owner: dict[str, int] = {}
    for part in parts:
        for host in part.mark["hosts"]:
            if host in owner:
                raise MergeError(f"host {host} ran in shard {owner[host]} and {part.index}")
            owner[host] = part.index
            if assignment.get(host, part.index) != part.index:
                raise MergeError(f"{part.path}: host {host} ran in shard {part.index} but was "
                                 f"planned for shard {assignment[host]}")
    missing = [i for i in range(1, count + 1) if i not in seen]
    return count, missing, assignment


def merge(paths: list[Path], out: Path, baseline: RunResults | None = None) -> MergeOutcome:
    """Merge the parts at ``paths`` into the new run directory ``out``."""
    parts = sorted((read_part(p) for p in paths), key=lambda p: p.index)
    count, missing, assignment = check(parts)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"-o {out}: exists and is not an empty directory")
    for part in parts:
        if out.resolve() == part.path.resolve() or part.path.resolve() in out.resolve().parents:
            raise MergeError(f"-o {out}: inside part {part.path}")
    plan = parts[0].mark["plan"]
    by_host = {host: part for part in parts for host in part.mark["hosts"]}
    cells: list[Cell] = []
    for host, row, kind, voting in plan["cells"]:
        part = by_host.get(host)
        found = part.results.cell(host, row) if part else None
        if found is None:
            found = Cell(host, row, CellKind(kind), voting=bool(voting))
            if host in assignment:
                found.reason = f"shard {assignment[host]}/{count} missing: not merged"
            else:
                found.reason = "in no merged shard"
        cells.append(found)
    out.mkdir(parents=True, exist_ok=True)
    modes: set[str] = set()
    for part in parts:
        for host in part.mark["hosts"]:
            # Images are linked (large, never written in place: a run that builds one
            # again removes it first); logs are copied, since a resumed cell appends.
            modes |= _link_tree(part.path / "images" / host, out / "images" / host)
            _link_tree(part.path / "logs" / host, out / "logs" / host, link=False)
        keep = out / "parts" / f"shard-{part.index}-of-{count}"
        for name in ("results.json", "run.log"):
            modes |= _link_tree(part.path / name, keep / name, link=False)
    merged = RunResults(
        run_id=out.name,
        matrix=parts[0].results.matrix,
        hosts=list(plan["hosts"]),
        rows=list(plan["rows"]),
        cells=cells,
        started=min((p.results.started for p in parts if p.results.started), default=None),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        interrupted=bool(missing) or any(p.results.interrupted for p in parts),
        dib_tree=dict(parts[0].results.dib_tree),
        engine={"shards": {str(p.index): p.results.engine for p in parts}},
        host_images={k: v for p in parts for k, v in sorted(p.results.host_images.items())},
        base_images={k: v for p in parts for k, v in sorted(p.results.base_images.items())},
        options=dict(parts[0].results.options),
        reruns=[r for p in parts for r in p.results.reruns],
    )
    files = "+".join(sorted(modes - {"copy-meta"})) or "none"
    merged.shard = {
        "kind": "merged",
        "count": count,
        "matrix_hash": parts[0].mark["matrix_hash"],
        "dib_tree_digest": parts[0].mark.get("dib_tree_digest"),
        "parts": [{"index": p.index, "run_id": p.results.run_id, "source": str(p.path),
                   "hosts": list(p.mark["hosts"]), "interrupted": p.results.interrupted}
                  for p in parts],
        "missing": missing,
        "files": files,
        "plan": plan,
    }
    save(merged, out)
    write_all(out, merged, baseline=baseline)
    return MergeOutcome(merged, out, missing, files)


def _link_tree(source: Path, dest: Path, link: bool = True) -> set[str]:
    """Hard-link (else copy) the regular files under ``source`` to ``dest``; symlinks and
    other special files are skipped. Returns how files came over."""
    if source.is_symlink() or not source.exists():
        return set()
    how: set[str] = set()
    if source.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        how.add(_place(source, dest, link))
        return how
    for root, dirs, files in os.walk(source, followlinks=False):
        here = Path(root)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in files:
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            how.add(_place(path, target, link))
    return how


def _place(source: Path, dest: Path, link: bool) -> str:
    if link:
        try:
            os.link(source, dest)
            return "hardlink"
        except OSError:
            pass
        shutil.copy2(source, dest)
        return "copy"
    shutil.copy2(source, dest)
    return "copy-meta"
