"""``dib-matrix snapshot save|list|show|rm|export``: the snapshot store on the command line.

The store's rules are :mod:`matrix.snapshot.store`'s, a manifest's
:mod:`matrix.snapshot.manifest`'s, saving a run is :mod:`matrix.snapshot.save`'s;
this module reads the arguments, prints, and turns every problem into one line and
exit code 2 (never 1, which means a voting cell failed).
Names, URIs and dates come from manifests that may be hostile: every printed line goes
through ``reports.sanitize``, and ``--json`` output is ASCII.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tabulate import tabulate

from matrix.run.matrixrun import DEFAULT_PACKAGE_CACHE
from matrix.snapshot import retain
from matrix.snapshot.export import export
from matrix.snapshot.manifest import ArchiveState, Snapshot, StoreError
from matrix.snapshot.save import SaveError, save_run, snapshot_for
from matrix.snapshot.store import DEFAULT_ROOT, Store, Usage
from reports.gate import EXIT_OK, EXIT_USAGE
from reports.sanitize import one_line, safe_text
from results.archive import LATEST, OutDir
from results.paths import UnsafePath, absolute
from results.sizes import format_size

STORE_ENV = "DIB_MATRIX_SNAPSHOTS"  # the store's directory when --store is not given
DEFAULT_OUT = Path("out")
SHORT_SHA = 12  # hex digits of a sha256 shown
SHOWN_MISSING = 10  # missing files listed by show
FIELD_LIMIT = 300  # characters of one printed value


def store_root(given: Path | None) -> Path:
    """--store, else $DIB_MATRIX_SNAPSHOTS, else ~/.cache/dib-matrix/snapshots."""
    if given is not None:
        return absolute(given)
    from_env = os.environ.get(STORE_ENV)
    return absolute(Path(from_env)) if from_env else DEFAULT_ROOT


def add_parser(sub: Any) -> None:
    snapshot = sub.add_parser(
        "snapshot", help="saved repository snapshots: save, list, show, rm, export",
        description="A snapshot is the repository state a run read (InRelease, indices, "
        "the .debs of its images), kept content-addressed in a store (default "
        f"{DEFAULT_ROOT}, or ${STORE_ENV}) so the run can be replayed with "
        "'run --snapshot NAME'.")
    actions = snapshot.add_subparsers(dest="action", metavar="ACTION")
    snapshot.set_defaults(func=lambda args: _usage("snapshot: give an action: save, list, "
                                                   "show, rm or export"))

    save = _action(actions, "save", cmd_save, "save a run's repository state as a snapshot",
                   "Keep RUN's InRelease, indices and pool files (repository.json) and the "
                   ".deb of every package its images hold, from the store, the package "
                   "cache or the archive. Prints 'incomplete' when some cannot be had.")
    save.add_argument("run", metavar="RUN", help="a run directory, 'latest' or a run id in --out")
    save.add_argument("--name", metavar="NAME", help="the snapshot's name (default: the run id)")
    save.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                      help="the output directory a run id is looked up in (default: out)")
    save.add_argument("--source", type=Path, action="append", default=None, metavar="DIR",
                      help="a package cache to take .debs from (default: the shared "
                      "apt-cacher-ng cache); may be given more than once")
    save.add_argument("--no-fetch", action="store_true",
                      help="never download from the archive: the store and --source only")

    listing = _action(actions, "list", cmd_list, "list the snapshots",
                      "One line per snapshot: name, created, run, suites, pool files, bytes, "
                      "and bytes only it holds (what 'snapshot rm' frees).")
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = _action(actions, "show", cmd_show, "one snapshot: suites, dates, files, bytes",
                   "Per archive and suite: the InRelease's sha256, Date, Valid-Until, "
                   "components, architectures and indices; the pool files, bytes and the "
                   "files the snapshot lacks. NAME may also be a run id or a run directory.")
    show.add_argument("name", metavar="NAME", help="snapshot name, run id or run directory")
    show.add_argument("--json", action="store_true", help="print JSON")

    remove = _action(actions, "rm", cmd_rm, "remove a snapshot and the files only it held",
                     "Remove snapshot NAME's manifest, then every blob of the store that no "
                     "snapshot names.")
    remove.add_argument("name", metavar="NAME", help="snapshot name")

    out = _action(actions, "export", cmd_export, "write a snapshot out as a Debian archive",
                  "Write snapshot NAME to DIR in Debian's archive layout (DIR/debian/dists, "
                  "DIR/debian/pool), hard-linked from the store, for any web server to serve. "
                  "DIR must be absent or empty.")
    out.add_argument("name", metavar="NAME", help="snapshot name, run id or run directory")
    out.add_argument("dest", type=Path, metavar="DIR", help="an absent or empty directory")


def _action(actions: Any, name: str, func: Any, summary: str, description: str) -> Any:
    parser = actions.add_parser(name, help=summary, description=description)
    parser.add_argument("--store", type=Path, metavar="DIR",
                        help=f"the snapshot store (default: ${STORE_ENV} or {DEFAULT_ROOT})")
    parser.set_defaults(func=lambda args: _guarded(func, args))
    return parser


def _guarded(func: Any, args: argparse.Namespace) -> int:
    """Run a command; every problem it meets is one line and exit code 2."""
    try:
        return int(func(args, Store(store_root(args.store))))
    except (StoreError, SaveError, UnsafePath) as err:
        return _usage(str(err))
    except OSError as err:
        return _usage(f"{err.filename or 'snapshot'}: {err.strerror or err}")


# ---------------------------------------------------------------- save


def cmd_save(args: argparse.Namespace, store: Store) -> int:
    sources = args.source if args.source is not None else [DEFAULT_PACKAGE_CACHE]
    result = save_run(store, run_directory(args.run, args.out), args.name,
                      package_sources=[absolute(path) for path in sources],
                      fetch=not args.no_fetch)
    _print_lines(result.lines())
    return EXIT_OK


def run_directory(text: str, out_dir: Path) -> Path:
    """RUN as ``keep`` reads it: a run directory's path (or its results.json), 'latest',
    or a run id in ``out_dir``."""
    if "/" in text:
        path = absolute(Path(text))
        return path.parent if path.is_file() else path
    out = OutDir(absolute(out_dir))
    run = out.latest() if text == LATEST else out.run(text)
    if run is None:
        raise SaveError(f"no '{LATEST}' run in {out.path}")
    return run.path


# ---------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace, store: Store) -> int:
    snapshots = store.snapshots()
    usages = usages_of(store, snapshots)
    if args.json:
        _print_json([_summary(snap, usages[snap.name]) for snap in snapshots])
        return EXIT_OK
    if not snapshots:
        print(f"no snapshots in {one_line(str(store.root))}")
        return EXIT_OK
    rows = [[snap.name, snap.created, snap.run_id or "-", "; ".join(suites_of(snap)) or "-",
             pool_count(snap), format_size(usages[snap.name].bytes),
             format_size(usages[snap.name].unique_bytes)] for snap in snapshots]
    rows = [[one_line(str(value), FIELD_LIMIT) for value in row] for row in rows]
    print(safe_text(tabulate(rows, headers=["name", "created", "run", "suites", "packages",
                                            "bytes", "only it holds"],
                             disable_numparse=True)))
    return EXIT_OK


def usages_of(store: Store, snapshots: list[Snapshot]) -> dict[str, Usage]:
    """Each snapshot's files and bytes in the store, and the bytes no other one names:
    every manifest read once (``Store.usage`` reads them all for each snapshot)."""
    named_by = Counter(sha for snap in snapshots for sha in snap.blobs())
    sizes: dict[str, int | None] = {}
    found = {}
    for snap in snapshots:
        files = total = unique = absent = 0
        for sha in snap.blobs():
            if sha not in sizes:
                sizes[sha] = _blob_size(store, sha)
            size = sizes[sha]
            if size is None:
                absent += 1
                continue
            files, total = files + 1, total + size
            unique += size if named_by[sha] == 1 else 0
        found[snap.name] = Usage(files, total, unique, absent)
    return found


def _blob_size(store: Store, sha: str) -> int | None:
    try:
        return os.lstat(store.blob_path(sha)).st_size
    except OSError:
        return None


def suites_of(snap: Snapshot) -> list[str]:
    """``debian bookworm``, ``debian-security bookworm-security``: the archive's last path
    component (its host when it has none) and each suite."""
    return [f"{_archive_label(uri)} {suite}" for uri, archive in sorted(snap.archives.items())
            for suite in sorted(archive.suites)]


def _archive_label(uri: str) -> str:
    rest = uri.split("://", 1)[-1]
    host, _, path = rest.partition("/")
    return path.rstrip("/").rsplit("/", 1)[-1] or host


def pool_count(snap: Snapshot) -> int:
    return sum(path.startswith("pool/") for archive in snap.archives.values()
               for path in archive.files)


def _summary(snap: Snapshot, usage: Usage) -> dict[str, Any]:
    return {"name": snap.name, "created": snap.created, "run_id": snap.run_id,
            "origin": snap.origin, "suites": suites_of(snap), "pool_files": pool_count(snap),
            "files": usage.files, "bytes": usage.bytes, "unique_bytes": usage.unique_bytes,
            "missing": sum(len(paths) for paths in snap.missing.values())}


# ---------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace, store: Store) -> int:
    snap = snapshot_for(store, args.name)
    others = [other for other in store.snapshots() if other.name != snap.name]
    usage = usages_of(store, [snap, *others])[snap.name]
    if args.json:
        document = _summary(snap, usage)
        document["archives"] = {uri: _archive_json(archive)
                                for uri, archive in sorted(snap.archives.items())}
        document["missing"] = {uri: sorted(paths) for uri, paths in sorted(snap.missing.items())}
        _print_json(document)
        return EXIT_OK
    _print_lines(describe(snap, usage))
    return EXIT_OK


def describe(snap: Snapshot, usage: Usage) -> list[str]:
    """``show``'s lines: the snapshot, each archive and suite, its files, what it lacks."""
    lines = [f"snapshot  {snap.name} ({snap.origin}), created {snap.created}, "
             f"run {snap.run_id or '-'}",
             f"files     {usage.files} in the store, {format_size(usage.bytes)} "
             f"({format_size(usage.unique_bytes)} only it holds)"
             + (f"; {usage.missing} named but absent from the store" if usage.missing else "")]
    for uri, archive in sorted(snap.archives.items()):
        pool = {path: ref for path, ref in archive.files.items() if path.startswith("pool/")}
        lines.append(f"archive   {uri}: {len(pool)} pool files, "
                     f"{format_size(sum(ref.size for ref in pool.values()))}")
        for name, suite in sorted(archive.suites.items()):
            lines += [f"  suite   {name}: InRelease {_short(suite.inrelease)}, "
                      f"Date {suite.date or '-'}, Valid-Until {suite.valid_until or '-'}",
                      f"          components {' '.join(suite.components) or '-'}; "
                      f"architectures {' '.join(suite.architectures) or '-'}"]
            lines += [f"          index {path} {_short(sha)}"
                      for path, sha in sorted(suite.indices.items())]
    missing = [f"{uri}/{path}" for uri, paths in sorted(snap.missing.items()) for path in paths]
    if missing:
        lines.append(f"missing   {len(missing)} files the snapshot lacks (no blob could be had):")
        lines += [f"          {path}" for path in missing[:SHOWN_MISSING]]
        if len(missing) > SHOWN_MISSING:
            lines.append(f"          ... and {len(missing) - SHOWN_MISSING} more")
    return lines


def _short(sha: str | None) -> str:
    return sha[:SHORT_SHA] if sha else "-"


def _archive_json(archive: ArchiveState) -> dict[str, Any]:
    pool = [ref for path, ref in archive.files.items() if path.startswith("pool/")]
    return {"suites": {name: suite.to_json() for name, suite in sorted(archive.suites.items())},
            "pool_files": len(pool), "pool_bytes": sum(ref.size for ref in pool),
            "files": len(archive.files)}


# ---------------------------------------------------------------- rm, export


def cmd_rm(args: argparse.Namespace, store: Store) -> int:
    store.remove(args.name)
    print(f"removed snapshot {one_line(args.name, FIELD_LIMIT)}")
    stats = store.collect(grace_seconds=0)
    print(f"freed {format_size(stats.bytes + stats.temporary_bytes)} "
          f"({stats.blobs} files no snapshot names)")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, store: Store) -> int:
    snap = snapshot_for(store, args.name)
    dest = absolute(args.dest)
    stats = export(store, snap, dest)
    lines = [f"exported snapshot {snap.name} to {dest}: {stats.files} files, "
             f"{format_size(stats.bytes)} ({stats.linked} hard links, {stats.copied} copies)"]
    lines += [f"  {uri} -> {dest / root if root else dest}"
              for uri, root in sorted(stats.roots.items())]
    _print_lines(lines)
    return EXIT_OK


# ---------------------------------------------------------------- gc (dib-matrix gc)


def gc_lines(result: retain.SnapshotGc, store: Store, dry_run: bool) -> list[str]:
    """What ``dib-matrix gc`` says of the snapshot store."""
    if result.collected is None and not result.drops:
        return []
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} snapshot {drop.name}: {drop.why}" for drop in result.drops]
    summary = f"snapshots: {verb} {len(result.drops)} of {result.snapshots}"
    if result.collected is not None:
        freed = result.collected.bytes + result.collected.temporary_bytes
        summary += (f", freed {format_size(freed)} ({result.collected.blobs} files no "
                    f"snapshot names) in {store.root}")
    return [*lines, summary]


def gc_snapshots(out: OutDir, gone: Iterable[str], dry_run: bool,
                 root: Path | None = None) -> int:
    """The snapshot part of ``dib-matrix gc``: records of runs gone from ``out`` (or
    going: ``gone``), then the blobs nothing names. Prints; the exit code."""
    store = Store(store_root(root))
    try:
        result = retain.collect(store, out, gone, dry_run)
    except StoreError as err:
        return _usage(f"gc {store.root}: {err}")
    _print_lines(gc_lines(result, store, dry_run))
    return EXIT_OK


# ---------------------------------------------------------------- output


def _print_lines(lines: Iterable[str]) -> None:
    """Each line on one line (its indentation kept), the whole made terminal-safe."""
    print(safe_text("\n".join(" ".join(line.splitlines()) for line in lines)))


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=1, sort_keys=True))  # ASCII: nothing a terminal obeys


def _usage(message: str) -> int:
    print(f"dib-matrix: {one_line(message, 2000)}", file=sys.stderr)
    return EXIT_USAGE
