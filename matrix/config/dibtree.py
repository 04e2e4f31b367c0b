"""The dib tree: the directory holding ``dib/`` and ``elements/`` that a run's cells run.

One value per run, :class:`DibTree`, made once by the command line (from ``--dib-tree``,
the resumed run's tree, or this installation's: :func:`bundled_tree`) and handed to
everything that needs the tree: the dib layer bakes its files, reuse keys and the shard
mark take its digests, provenance records its commit and per-file digests, cells find
their elements through it. No other module lists, reads or hashes the tree's files.

The value holds the files of :data:`PARTS` (what a cell sees: dib, its elements and the
tox row's inputs), read when it is made: every cell of a run sees the tree as it was
when the run started, even if it is edited meanwhile. A file is kept with its content
and whether it is executable (the owner's x bit: the one mode bit git records and dib
reads), so two checkouts of one commit give one digest whatever their umask.

Every digest is :func:`digest_files` over some of those files: the whole tree's
(``digest``: the dib layer's tag, the shard mark, the tox row's reuse key) and a part's
(``digest_of(["dib", "elements/base", ...])``: a build's reuse key).

A tree is input (a path given, or named by a resumed run's results.json): it must be a
dib tree, only regular files are read (a FIFO never hangs the run), a link is followed
only to a file inside the tree (a link out of it would bake a file of this machine into
a shared image layer), and the whole is bounded.

Imports only ``dib`` and ``results`` below it: the dib layer (``matrix.hostgen``) takes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dib import bundled, spawn
from results.paths import kind, resolved
from results.reader import shown_path
from results.safefile import UnsafeFile, open_regular

# What a cell sees of the tree, the rarely changed first (the dib layer copies them in
# this order, one COPY each). The tox row needs the packaging files and dib's unit tests
# besides dib and elements.
PARTS: tuple[str, ...] = (
    "pyproject.toml",
    "tox.ini",
    "tests/__init__.py",
    "tests/unit/__init__.py",
    "tests/unit/dib",
    "matrix/run/incontainer",
    "dib",
    "elements",
)
PACKAGE = "dib"
ELEMENTS = "elements"
ENTRY = "dib/__main__.py"  # what makes a directory a dib tree, with ELEMENTS
SKIPPED = "__pycache__"  # byte code the interpreter writes: not the tree's
# Where an installed package assembles its dib tree (see bundled_tree).
TREE_CACHE = Path.home() / ".cache" / "dib-matrix" / "dib-tree"
CACHE_NAME_LENGTH = 16
MAX_TREE_BYTES = 256 << 20  # dib and its elements are about 2 MB
MAX_TREE_FILES = 50_000
MAX_TREE_DEPTH = 64  # directories below a part (dib's own go 3 deep)
GIT_TIMEOUT = 10.0  # seconds for one git query
GIT_OUTPUT_LIMIT = 16 << 20
EXECUTABLE_MODE, PLAIN_MODE = 0o755, 0o644  # as git checks files out (umask 022)


class DibTreeError(ValueError):
    """Not a dib tree, or one with a file that may not be read; the message says which."""


@dataclass(frozen=True)
class TreeFile:
    """One file of the tree as cells see it."""

    content: bytes = field(repr=False)
    executable: bool
    sha256: bytes = field(repr=False)
    link: str | None = None  # the link's text when the tree holds a link to this file

    @property
    def mode(self) -> int:
        return EXECUTABLE_MODE if self.executable else PLAIN_MODE


@dataclass(frozen=True)
class DibTree:
    """A dib tree, read once: where it is, its files, their digest, its git state."""

    path: Path  # resolved
    files: Mapping[str, TreeFile] = field(repr=False)  # name in the tree -> file, sorted
    parts: tuple[str, ...]  # the PARTS the tree has, in PARTS order
    digest: str  # digest_files(files): the whole tree
    commit: str | None = None  # git HEAD, when it holds the tree's files
    dirty: bool | None = None  # whether the files differ from that commit's

    @classmethod
    def read(cls, path: Path, named: str = "--dib-tree") -> DibTree:
        """The tree at ``path`` (``named`` says in messages where the path came from).
        DibTreeError when it is not a dib tree or a file of it may not be read."""
        root = locate(path, named)
        try:
            files = read_parts({part: root / part for part in PARTS}, within=root)
        except DibTreeError as err:
            raise DibTreeError(f"{named} {shown_path(root)}: {err}") from err
        commit, dirty = git_state(root, files)
        return cls(root, files, present_parts(files), digest_files(files), commit, dirty)

    @property
    def elements(self) -> Path:
        """The elements directory of the tree on this machine."""
        return elements_of(self.path)

    @staticmethod
    def element_part(element: str) -> str:
        """The part of the tree one element's directory is (``elements/base``)."""
        return f"{ELEMENTS}/{element}"

    def select(self, parts: Iterable[str]) -> dict[str, TreeFile]:
        """The files of ``parts`` (a file's name, or a directory's with all below it)."""
        wanted = tuple(parts)
        return {name: file for name, file in self.files.items()
                if any(_under(name, part) for part in wanted)}

    def digest_of(self, parts: Iterable[str]) -> str:
        """The digest of some parts only (a build's key: dib and its element closure)."""
        return digest_files(self.select(parts))

    def file_digests(self, parts: Iterable[str], chars: int = 16) -> dict[str, str]:
        """Per file of ``parts``: its content's sha256 (``chars`` hex digits), ``+x`` when
        executable. The readable form of a digest, so that a comparison of two runs can
        name the files that changed."""
        return {name: file.sha256.hex()[:chars] + ("+x" if file.executable else "")
                for name, file in self.select(parts).items()}

    def contents(self) -> dict[str, bytes]:
        return {name: file.content for name, file in self.files.items()}

    def modes(self) -> dict[str, int]:
        return {name: file.mode for name, file in self.files.items()}

    def to_json(self) -> dict[str, Any]:
        """What results.json records of the tree (``RunResults.dib_tree``)."""
        return {"path": str(self.path), "commit": self.commit, "dirty": self.dirty,
                "digest": self.digest}


def elements_of(root: Path) -> Path:
    """The elements directory of the dib tree at ``root``."""
    return root / ELEMENTS


def locate(path: Path, named: str = "--dib-tree") -> Path:
    """``path`` resolved, when it is a dib tree (``dib/__main__.py`` and ``elements/``);
    DibTreeError naming ``named`` (where the path came from) otherwise."""
    shown = f"{named} {shown_path(path)}"
    if "\0" in str(path):
        raise DibTreeError(f"{shown}: not a path (it holds a NUL character)")
    try:
        root = resolved(path)
        is_tree = (root / ENTRY).is_file() and elements_of(root).is_dir()
    except (OSError, ValueError) as err:
        raise DibTreeError(f"{shown}: {getattr(err, 'strerror', None) or err}") from err
    if not is_tree:
        raise DibTreeError(f"{shown}: no dib/ package and elements/ directory there")
    return root


# ---------------------------------------------------------------- reading the files


@dataclass
class _Budget:
    """What is left to read of the tree: bytes and files."""

    bytes: int
    files: int

    def take(self, size: int) -> None:
        self.bytes -= size
        self.files -= 1
        if self.bytes < 0 or self.files < 0:
            raise DibTreeError(f"more than {MAX_TREE_FILES} files or {MAX_TREE_BYTES >> 20} "
                               f"MiB in {', '.join(PARTS)}: not a dib tree to copy into "
                               "every cell")


def read_parts(sources: Mapping[str, Path], within: Path | None = None
               ) -> dict[str, TreeFile]:
    """Every file of the parts, by its name in the tree (``elements/base/element-deps``),
    sorted. ``sources`` maps a part to where it is (a missing one is left out: the tox
    row says so); a link must lead to a file inside ``within`` (default: its part).

    A file under another part's source belongs to that part only: an installed ``dib``
    package holds the installed ``elements`` and the tox row's inputs."""
    budget = _Budget(MAX_TREE_BYTES, MAX_TREE_FILES)
    found = {part: top for part, top in sources.items() if os.path.lexists(top)}
    tops = {os.path.realpath(top) for top in found.values()}
    files: dict[str, TreeFile] = {}
    for part, top in found.items():
        real = Path(os.path.realpath(top))
        bound = within or real
        if not _inside(real, bound):
            raise DibTreeError(f"{part}: a link out of the tree (to {shown_path(real)}): "
                               "refused")
        for name, path in _part_paths(part, top, tops - {str(real)}):
            files[name] = _read_file(name, path, bound, budget)
    return dict(sorted(files.items()))


def present_parts(files: Mapping[str, TreeFile]) -> tuple[str, ...]:
    """The PARTS that hold a file, in PARTS order."""
    return tuple(part for part in PARTS if any(_under(name, part) for name in files))


def _under(name: str, part: str) -> bool:
    return name == part or name.startswith(part + "/")


def _inside(path: Path, bound: Path) -> bool:
    return path == bound or bound in path.parents


def _part_paths(part: str, top: Path, others: set[str]) -> Iterator[tuple[str, Path]]:
    """Each entry of a part that is not a directory, with its name in the tree; a walk
    with its own stack, bounded in depth (no recursion a deep tree could exhaust)."""
    if not top.is_dir():
        yield part, top
        return
    stack = [(top, 0)]
    while stack:
        directory, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise DibTreeError(f"{_name(part, top, directory)}: nested deeper than "
                               f"{MAX_TREE_DEPTH} directories")
        for entry in _listing(part, top, directory):
            path = Path(entry.path)
            if entry.name == SKIPPED or os.path.realpath(path) in others:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((path, depth + 1))
            elif entry.is_symlink() and path.is_dir():
                raise DibTreeError(f"{_name(part, top, path)}: a link to a directory (the "
                                   "tree is read without following those)")
            else:
                yield _name(part, top, path), path


def _listing(part: str, top: Path, directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as err:
        raise DibTreeError(f"{_name(part, top, directory)}: {err.strerror or err}") from err


def _name(part: str, top: Path, path: Path) -> str:
    return str(Path(part) / path.relative_to(top)) if path != top else part


def _read_file(name: str, path: Path, bound: Path, budget: _Budget) -> TreeFile:
    """One file, read whole (within what is left of the budget); DibTreeError when it is
    a link out of ``bound``, not a regular file, or cannot be read."""
    link = None
    try:
        if path.is_symlink():
            link = os.readlink(path)
            if not _inside(Path(os.path.realpath(path)), bound):
                raise DibTreeError(f"{name}: a link out of the tree (to "
                                   f"{shown_path(link)}): refused")
        with open_regular(path) as stream:
            mode = os.fstat(stream.fileno()).st_mode
            content = stream.read(max(budget.bytes, 0) + 1)
    except UnsafeFile as err:  # its message names the whole path: the kind is enough
        raise DibTreeError(f"{name}: {str(err).rsplit(': ', 1)[-1]}") from err
    except OSError as err:
        to = f"a link to {shown_path(link)}: " if link is not None else ""
        raise DibTreeError(f"{name}: {to}{_why(path, err)}") from err
    budget.take(len(content))
    return TreeFile(content, bool(mode & stat.S_IXUSR), hashlib.sha256(content).digest(), link)


def _why(path: Path, err: OSError) -> str:
    """Why a file could not be opened: its kind when it is no regular file (a socket
    cannot be opened at all), else the system's reason."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return err.strerror or str(err)
    if not stat.S_ISREG(mode):
        return f"not a regular file ({kind(mode)})"
    return err.strerror or str(err)


def digest_files(files: Mapping[str, TreeFile]) -> str:
    """The one digest of tree files: their names, modes and contents, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name].mode:o}\0".encode())
        digest.update(files[name].sha256)
    return digest.hexdigest()


# ---------------------------------------------------------------- git


def git_state(root: Path, files: Mapping[str, TreeFile]) -> tuple[str | None, bool | None]:
    """The commit checked out at ``root`` and whether ``files`` differ from that commit's
    (content, executable bit, a file added or gone). (None, None) without git, outside a
    checkout, or when the commit holds none of the tree's parts (``root`` lies in another
    repository: its commit says nothing of this tree).

    Git only reads its objects here: nothing in the checkout is written (``git status``
    would refresh the index) and no hook or filter of the repository runs."""
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    listing = _git(root, "ls-tree", "-r", "-z", "HEAD", "--", *PARTS) if head else None
    if not head or listing is None:
        return None, None
    committed = _blobs(listing)
    if not committed:
        return None, None
    size = len(next(iter(committed.values()))[1])
    return head.strip(), committed != {name: _entry(file, size) for name, file in files.items()}


def _git(root: Path, *args: str) -> str | None:
    """Git's output in the checkout at ``root``; None when git fails or is missing."""
    argv = ("git", "-c", "core.fsmonitor=false", "-C", str(root), *args)
    try:
        result = spawn.run(argv, timeout=GIT_TIMEOUT, errors_apart=True, whole_output=True,
                           limit=GIT_OUTPUT_LIMIT)
    except OSError:
        return None
    return result.text if result.ok else None


def _blobs(listing: str) -> dict[str, tuple[str, str]]:
    """``git ls-tree -r -z`` output: file name -> (mode, object id), of the blobs a tree
    is read with (byte code committed by mistake is left out, as when reading)."""
    found = {}
    for entry in listing.split("\0"):
        info, _, name = entry.partition("\t")
        words = info.split()
        if len(words) == 3 and words[1] == "blob" and SKIPPED not in name.split("/"):
            found[name] = (words[0], words[2])
    return found


def _entry(file: TreeFile, size: int) -> tuple[str, str]:
    """What ``git ls-tree`` would list for ``file`` (an object id of ``size`` hex digits:
    sha1, or sha256 in a repository of that format)."""
    if file.link is not None:
        mode, data = "120000", file.link.encode()
    else:
        mode, data = ("100755" if file.executable else "100644"), file.content
    algorithm = hashlib.sha1 if size == 40 else hashlib.sha256
    return mode, algorithm(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------- this installation's tree


def bundled_tree(cache: Path = TREE_CACHE) -> DibTree:
    """The dib tree a run uses unless told otherwise (``--dib-tree``).

    From a checkout, the checkout. An installed package has no such directory: its wheel
    carries the parts inside the packages (``dib.bundled``), so they are assembled once,
    laid out like a checkout, under ``cache/<digest>``, and every run of this
    installation uses that directory (baked as the dib layer, bind-mounted with
    ``--dib-mount``, recorded in results.json).
    """
    named = "this installation's dib tree"
    if not bundled.installed():
        return DibTree.read(bundled.SOURCE_ROOT, named)
    try:
        files = read_parts({part: bundled.path(part) for part in PARTS})
    except DibTreeError as err:
        raise DibTreeError(f"{named}: {err}") from err
    digest = digest_files(files)
    root = cache / digest[:CACHE_NAME_LENGTH]
    if not root.is_dir():
        _assemble(files, cache, root)
    return DibTree(root.resolve(), files, present_parts(files), digest)


def _assemble(files: Mapping[str, TreeFile], cache: Path, root: Path) -> None:
    """Write ``files`` under ``root`` in one rename (another process may race us)."""
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".assembling-", dir=cache))
    try:
        for name, file in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(file.content)
            (staging / name).chmod(file.mode)  # hooks keep their x bit
        try:
            os.rename(staging, root)
        except OSError:
            if not root.is_dir():  # else another process assembled it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
