"""Each cell's last-known-good: the files of its last success, kept past its run.

At the end of every run, each cell that is ``success`` gets its log, its images and
what dib wrote beside them (checksum, package manifest, disk layout) hard-linked into
``<out>/.dib-matrix/last-good/<host>/<row>/`` (copied only when a link cannot be
made: another filesystem), with ``last-good.json``: the run id, the date, the cell's
reuse key and every file with its sha256 and size. A hard link costs no space while
the run exists, and keeps the file when retention removes the run.

Inside the cell's directory each file keeps the path results.json gives it in its run
(``logs/<host>/<row>.log``, ``images/<host>/<target>.qcow2``), so a last-good reads as
a small run directory of one cell.

The previous last-good of a cell is replaced as a whole: the new one is made under a
hidden name, the old one renamed away, the new one renamed into place, the old one
removed; all of it under the archive's lock. A writer killed half-way leaves hidden
``.new-*``/``.old-*`` directories, which the next writer sweeps.

``last-good.json`` is read back as untrusted input (the output directory may be shared
or edited): bounded, names checked, every file path relative and inside its directory.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from results import treestore
from results.archive import OutDir, RunDir, Warn, warn_on_stderr
from results.model import Cell, CellKind, RunResults, State
from results.names import is_name, is_row, is_run_id
from results.paths import UnsafePath, inside
from results.reader import clip, error_line, printable, shown_path
from results.safefile import MiB, open_regular, read_text
from results.store import write_atomically
from results.trees import remove_tree
from results.treestore import TreeFile, is_digest

RECORD = "last-good.json"
FORMAT = 1
RECORD_LIMIT = 1 * MiB  # ours are a few hundred bytes a file
MAX_FILES = 1000  # files of one cell: an image per output type and its sidecars
TEXT_LIMIT = 128  # characters of a date or a key
SIDECARS = (".sha256", ".layout.json")  # what dib writes beside each image
COPY_INSTEAD = (errno.EXDEV, errno.EMLINK, errno.EPERM)  # where a hard link cannot be made
HIDDEN_NEW, HIDDEN_OLD = ".new-", ".old-"
CHUNK = 1 << 20
# The rows an investigation swaps inputs of: their dib tree and host image are kept.
INVESTIGATED_KINDS = (CellKind.BUILD, CellKind.BOOT)
INPUT_NAMES = ("tree", "host_image", "snapshot")


class LastGoodError(ValueError):
    """A last-good.json this tool may not read; one line: file, what."""


@dataclass(frozen=True)
class GoodFile:
    path: str  # relative to the cell's last-good directory, as in its run's results.json
    sha256: str
    size: int


@dataclass(frozen=True)
class GoodInputs:
    """The inputs of a last success an investigation can swap back."""

    tree: str | None = None  # the run's dib tree digest (results.treestore keeps the tree)
    host_image: str | None = None  # the engine's id of the cell's host image
    snapshot: str | None = None  # the snapshot the run recorded (or replayed)

    def to_json(self) -> dict[str, str | None]:
        return {"tree": self.tree, "host_image": self.host_image, "snapshot": self.snapshot}


def inputs_of(results: RunResults, cell: Cell) -> GoodInputs:
    """What ``cell`` of ``results`` ran with, as far as an investigation swaps it."""
    if cell.kind not in INVESTIGATED_KINDS:
        return GoodInputs()
    tree = results.dib_tree.get("digest")
    image = cell.provenance.get("host_image")
    snapshot = results.repository.get("recorded") or results.repository.get("snapshot")
    return GoodInputs(tree if is_digest(tree) else None,
                      image if _short_text(image) else None,
                      snapshot if is_run_id(snapshot) else None)


@dataclass(frozen=True)
class LastGood:
    """One cell's last success, where its files now are."""

    directory: Path
    host: str
    row: str
    run_id: str
    date: str
    key: str | None
    files: tuple[GoodFile, ...]
    # What an investigation swaps back (matrix.run.investigate); None in records made
    # before they were kept, and for rows never investigated (hostgen, checks).
    inputs: GoodInputs = GoodInputs()

    @property
    def cell_id(self) -> str:
        return f"{self.host}.{self.row}"

    def file(self, good: GoodFile) -> Path:
        return inside(self.directory, *PurePosixPath(good.path).parts)


# ---------------------------------------------------------------- writing


def record_run(out: OutDir, run: RunDir, results: RunResults,
               warn: Warn = warn_on_stderr) -> list[LastGood]:
    """Every success of ``results`` (the run in ``run``) becomes its cell's last-good,
    unless the cell's last-good is from a later success. One cell that cannot be
    recorded is warned about; the others still are."""
    recorded = []
    with out.locked():
        swept: set[Path] = set()
        for cell in results.grid_cells():  # an investigation's variant is no cell's success
            if cell.state is not State.SUCCESS or not is_name(cell.host) or not is_row(cell.row):
                continue
            try:
                target = out.last_good(cell.host, cell.row)
                if target.parent not in swept:
                    _sweep(target.parent)
                    swept.add(target.parent)
                made = _record_cell(out, run, results, cell)
            except (OSError, UnsafePath, LastGoodError) as err:
                warn(f"last-good of {cell.id} not recorded: {_problem(err)}")
                continue
            if made is not None:
                recorded.append(made)
    return recorded


def _record_cell(out: OutDir, run: RunDir, results: RunResults, cell: Cell) -> LastGood | None:
    final = out.last_good(cell.host, cell.row)
    date = next((d for d in (cell.finished, results.finished, results.started)
                 if _short_text(d)), "")
    key = cell.key if _short_text(cell.key) else None
    inputs = inputs_of(results, cell)
    earlier = _existing(final)
    if earlier is not None and _later(earlier.date, date) and not _later(earlier.date, _now()):
        return None  # a resumed old run finishing now: the newer success stays
    final.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    new = inside(final.parent, f"{HIDDEN_NEW}{token}")
    old = inside(final.parent, f"{HIDDEN_OLD}{token}")
    new.mkdir()
    try:
        files = [_place(new, relative, source, known, earlier)
                 for relative, source, known in cell_files(run, cell)]
        document = {"format": FORMAT, "cell": cell.id, "host": cell.host, "row": cell.row,
                    "run_id": results.run_id, "date": date, "key": key,
                    "files": [vars(f) for f in files], **inputs.to_json()}
        write_atomically(new / RECORD, json.dumps(document, indent=1, sort_keys=True) + "\n")
        if os.path.lexists(final):
            os.rename(final, old)
        os.rename(new, final)
    except BaseException:
        remove_tree(new)
        raise
    remove_tree(old)
    return LastGood(final, cell.host, cell.row, results.run_id, date, key, tuple(files),
                    inputs)


def cell_files(run: RunDir, cell: Cell) -> Iterator[tuple[str, Path, str]]:
    """(path relative to the run, the file, its sha256 when results.json gives it) of a
    cell's log, images and the files beside each image; each once, regular files inside
    the run only (a path that leads out of it is not followed)."""
    wanted: dict[str, str] = {}
    if cell.log:
        wanted[cell.log] = ""
    for artifact in cell.artifacts:
        wanted.setdefault(artifact.path, artifact.sha256)
        for suffix in SIDECARS:
            wanted.setdefault(artifact.path + suffix, "")
    if cell.kind is CellKind.BUILD and cell.artifacts:
        for path in (run.packages(cell.host, cell.row), run.image(cell.host, cell.row,
                                                                  ".layout.json")):
            wanted.setdefault(run.relative(path), "")
    for relative, known in wanted.items():
        source = run.recorded(relative)
        if source is not None and _is_regular(source) and _plain_relative(relative):
            yield relative, source, known


def _place(new: Path, relative: str, source: Path, known: str,
           earlier: LastGood | None) -> GoodFile:
    dest = inside(new, *PurePosixPath(relative).parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(source, dest)
    info = os.stat(dest)
    digest = known or _digest_of_same_file(earlier, relative, info) or sha256_of(dest)
    return GoodFile(relative, digest, info.st_size)


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` at ``dest``; a copy only where no link can be made (another
    filesystem, the link count's limit, a filesystem that refuses links)."""
    try:
        os.link(source, dest)
    except OSError as err:
        if err.errno not in COPY_INSTEAD:
            raise
        shutil.copy2(source, dest)


def _digest_of_same_file(earlier: LastGood | None, relative: str, info: os.stat_result) -> str:
    """The sha256 the previous last-good gave the same file (same inode: a reused image,
    linked again), so an unchanged image is not read again every night."""
    if earlier is None:
        return ""
    for good in earlier.files:
        if good.path == relative and good.sha256:
            try:
                previous = os.stat(earlier.file(good))
            except (OSError, UnsafePath):
                return ""
            same = (previous.st_dev, previous.st_ino) == (info.st_dev, info.st_ino)
            return good.sha256 if same else ""
    return ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _sweep(host_dir: Path) -> None:
    """Remove what a writer killed half-way left in ``host_dir`` (we hold the lock)."""
    if not host_dir.is_dir():
        return
    for child in host_dir.iterdir():
        if child.name.startswith((HIDDEN_NEW, HIDDEN_OLD)):
            remove_tree(child)


def _existing(final: Path) -> LastGood | None:
    try:
        return read_dir(final)
    except (OSError, LastGoodError):
        return None  # none, or one not worth keeping: replaced


def _later(one: str, other: str) -> bool:
    """Whether date ``one`` is after ``other`` (both ISO 8601; unreadable: not later)."""
    try:
        return _when(one) > _when(other)
    except (ValueError, TypeError):
        return False


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _when(stamp: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(stamp[:-1] + "+00:00" if stamp.endswith("Z") else stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _problem(err: Exception) -> str:
    return error_line(err) if isinstance(err, OSError) else printable(str(err))


def keep_tree(out: OutDir, recorded: Iterable[LastGood], digest: str, root: Path,
              files: Mapping[str, TreeFile]) -> Path | None:
    """Keep the run's dib tree (``digest``, its ``files`` read from ``root``) when a
    last-good just ``recorded`` names it; its directory in the tree store."""
    if not any(good.inputs.tree == digest for good in recorded):
        return None
    with out.locked():
        return treestore.keep(out, digest, root, files)


def collect_trees(out: OutDir, warn: Warn = warn_on_stderr) -> list[str]:
    """Remove the kept dib trees no last-good names; the digests removed."""
    with out.locked():
        named = {good.inputs.tree for good in read_all(out, warn).values() if good.inputs.tree}
        return treestore.collect(out, named)


# ---------------------------------------------------------------- reading


def read(out: OutDir, host: str, row: str) -> LastGood | None:
    """Cell ``host``.``row``'s last-good; None when there is none (LastGoodError, OSError
    when there is one that cannot be read)."""
    try:
        directory = out.last_good(host, row)
    except UnsafePath:
        return None
    if not os.path.lexists(directory):
        return None
    return read_dir(directory)


def read_dir(directory: Path) -> LastGood:
    """The last-good in ``directory`` (named ``<host>/<row>``), checked."""
    record = directory / RECORD
    try:
        document = json.loads(read_text(record, RECORD_LIMIT))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON
        raise LastGoodError(f"{shown_path(record)}: not JSON ({clip(str(err))})") from None
    problem = _problem_in(document, directory.parent.name, directory.name)
    if problem:
        raise LastGoodError(f"{shown_path(record)}: {problem}")
    files = tuple(GoodFile(f["path"], f["sha256"], f["size"]) for f in document["files"])
    inputs = GoodInputs(*(document.get(name) for name in INPUT_NAMES))
    return LastGood(directory, document["host"], document["row"], document["run_id"],
                    document["date"], document.get("key"), files, inputs)


def read_all(out: OutDir, warn: Warn = warn_on_stderr) -> dict[str, LastGood]:
    """Every readable last-good by cell id; one that cannot be read is warned about."""
    found: dict[str, LastGood] = {}
    for host, row in _cells_in(out):
        try:
            good = read(out, host, row)
        except (OSError, LastGoodError) as err:
            warn(f"skipped last-good {_problem(err)}")
            continue
        if good is not None:
            found[good.cell_id] = good
    return found


def _cells_in(out: OutDir) -> Iterable[tuple[str, str]]:
    root = out.last_good_dir
    if not root.is_dir() or root.is_symlink():
        return []
    cells = []
    for host_dir in sorted(root.iterdir()):
        if not is_name(host_dir.name) or host_dir.is_symlink() or not host_dir.is_dir():
            continue
        cells += [(host_dir.name, row.name) for row in sorted(host_dir.iterdir())
                  if is_row(row.name) and not row.is_symlink() and row.is_dir()]
    return cells


def _problem_in(document: Any, host: str, row: str) -> str | None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return f"not a last-good record of format {FORMAT}"
    if document.get("host") != host or document.get("row") != row:
        return f"names cell {clip(document.get('host'))}.{clip(document.get('row'))}, " \
               f"not {host}.{row} (its directory)"
    if not is_run_id(document.get("run_id")):
        return f"run_id {clip(document.get('run_id'))} is not a run id"
    for name in ("date", "key"):
        value = document.get(name)
        if not (value is None and name == "key") and not _short_text(value):
            return f"{name} {clip(value)} is not a short line of text"
    for name in INPUT_NAMES:
        value = document.get(name)
        if value is not None and not _input_ok(name, value):
            return f"{name} {clip(value)} is not a {name.replace('_', ' ')}"
    files = document.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        return f"files must be a list of at most {MAX_FILES}"
    return next(filter(None, (_file_problem(index, f) for index, f in enumerate(files))), None)


def _file_problem(index: int, entry: Any) -> str | None:
    where = f"files[{index}]"
    if not isinstance(entry, dict) or set(entry) != {"path", "sha256", "size"}:
        return f"{where}: must be {{path, sha256, size}}"
    path, digest, size = entry["path"], entry["sha256"], entry["size"]
    if not isinstance(path, str) or not _plain_relative(path):
        return f"{where}.path: {clip(path)} is not a path inside the cell's directory"
    if not isinstance(digest, str) or len(digest) > 128 or not digest.isalnum() and digest:
        return f"{where}.sha256: {clip(digest)} is not a digest"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"{where}.size: {clip(size)} is not a size"
    return None


def _input_ok(name: str, value: Any) -> bool:
    if name == "tree":
        return is_digest(value)
    if name == "snapshot":
        return is_run_id(value)
    return _short_text(value) and value.isascii() and " " not in value  # an image id


def _plain_relative(path: str) -> bool:
    """A relative path of plain components under logs/ or images/, as results.json has."""
    parts = path.split("/")
    return (len(path) <= 1024 and len(parts) >= 2 and parts[0] in ("logs", "images")
            and path.isprintable() and "\\" not in path
            and all(part not in ("", ".", "..") for part in parts))


def _short_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= TEXT_LIMIT and value.isprintable()
