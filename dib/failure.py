"""dib's own failures as one structured record: a log line and ``<output>.failure.json``.

When a build fails, dib logs ``dib-failure: {json}`` just before its final
``ERROR:`` line and writes the same record beside the image (``-o /out/x`` ->
``/out/x.failure.json``, atomically). The orchestrator reads it back with
:func:`read` / :meth:`FailureRecord.from_json` before any log pattern.

Where a failure happens, code adds what it knows to the exception with
:func:`note` (the innermost note wins); the CLI turns the exception into the
record (:func:`record_for`). Hook processes tell dib what failed inside them
(install-packages, dib.bootstrap, an environment.d file in the hook runner)
through a small ``key=value`` file named by ``DIB_HOOK_FAILURE_FILE``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar

from dib.errors import CommandFailed, ConfigError, DibError, ElementError, Interrupted

VERSION = 1
KINDS = (
    "hook",
    "environment",
    "packages",
    "debootstrap",
    "output",
    "elements",
    "config",
    "interrupted",
    "internal",
)
LOG_PREFIX = "dib-failure: "
SUFFIX = ".failure.json"
MAX_TEXT = 1024
# Environment variable naming the file a hook process writes its own failure detail to.
HOOK_DETAIL_VAR = "DIB_HOOK_FAILURE_FILE"
HOOK_DETAIL_KEYS = ("kind", "status", "error", "command", "environment")
_ATTRIBUTE = "dib_failure"
# dib's temporary build directory (a new name every run) as error and command show it,
# so that the same failure reads the same on every run.
BUILD_DIR_NAME = "$TMP_BUILD_DIR"
_TEXT_FIELDS = ("phase", "hook", "element", "error", "command", "message")

# The most error-shaped line, in rank order (see pick_error_line).
_APT_LINE = re.compile(r"(?:^|\| )(E: .*\S)")
_SPECIFIC = re.compile(
    r"No space left on device|Permission denied|Operation not permitted|command not found"
    r"|: not found\s*$|No such file or directory"
    r"|Wrote only \d+ of \d+ bytes|Could not allocate block"  # tar, mkfs.ext4 -d: disk full
    r"|: unbound variable\s*$|: parameter null or not set\s*$"  # bash set -u, ${X:?}
)
_GENERIC = re.compile(r"\bERROR\b|\bFATAL\b|\bfatal\b|\berror:|\bError\b")
_TRACEBACK = "Traceback (most recent call last):"
E = TypeVar("E", bound=BaseException)


def _no_free_space() -> Dict[str, Optional[int]]:
    return {"build": None, "output": None}


@dataclass(frozen=True)
class FailureRecord:
    """What failed, where, and the failing command's own error line (version 1)."""

    kind: str = "internal"
    phase: Optional[str] = None
    hook: Optional[str] = None
    element: Optional[str] = None
    status: Optional[int] = None
    error: Optional[str] = None
    command: Optional[str] = None
    message: Optional[str] = None
    free_bytes: Dict[str, Optional[int]] = field(default_factory=_no_free_space)
    seconds: Optional[float] = None
    version: int = VERSION

    def bounded(self) -> FailureRecord:
        """Every text field cut to MAX_TEXT characters."""
        cut = {name: bound(getattr(self, name)) for name in _TEXT_FIELDS}
        return replace(self, **cut)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Compact, one line, sorted keys, ASCII only."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=True, separators=(",", ":"))

    def log_line(self) -> str:
        return LOG_PREFIX + self.to_json()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailureRecord:
        """Read a record back; unknown keys (from a newer dib) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        free = values.get("free_bytes")
        values["free_bytes"] = {**_no_free_space(), **(free if isinstance(free, dict) else {})}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> FailureRecord:
        """From the file's text, or from a log line starting with ``dib-failure: ``."""
        text = text.strip()
        if LOG_PREFIX in text:
            text = text.split(LOG_PREFIX, 1)[1]
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a dib failure record is a JSON object")
        return cls.from_dict(data)


def bound(text: Optional[str], limit: int = MAX_TEXT) -> Optional[str]:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def path_for(output: Path) -> Path:
    """``/out/debian-bookworm`` -> ``/out/debian-bookworm.failure.json``."""
    return output.with_name(output.name + SUFFIX)


def write(record: FailureRecord, path: Path) -> Path:
    """Write ``record`` to ``path`` atomically (temporary file in the same directory, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(record.to_json() + "\n")
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return path


def read(path: Path) -> FailureRecord:
    return FailureRecord.from_json(Path(path).read_text(encoding="utf-8"))


def free_bytes(path: Path) -> Optional[int]:
    """Bytes available (as ``df`` shows) on the filesystem holding, or to hold, ``path``."""
    for candidate in (path, *path.parents):
        try:
            info = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return info.f_bavail * info.f_frsize
    return None


def _traceback_line(lines: Sequence[str]) -> Optional[str]:
    """The exception line that ends the last Python traceback in ``lines``."""
    found, inside = None, False
    for line in lines:
        if line.strip() == _TRACEBACK or line.endswith(_TRACEBACK):
            inside = True
        elif inside and line.strip() and not line[:1].isspace():
            found, inside = line, False
    return found


def _ranked(lines: Sequence[str], last_resort: bool) -> Iterator[Optional[str]]:
    """Candidates, best kind first: apt/debootstrap ``E:`` (the first, later ones are
    consequences), a traceback's exception, specific OS errors, generic error words
    (for these the last, closest to the failure), then (``last_resort``) the last line."""
    yield next((m.group(1) for m in map(_APT_LINE.search, lines) if m), None)
    yield _traceback_line(lines)
    yield next((line for line in reversed(lines) if _SPECIFIC.search(line)), None)
    yield next((line for line in reversed(lines) if _GENERIC.search(line)), None)
    if last_resort:
        yield next((line for line in reversed(lines) if line.strip()), None)


def pick_error_line(lines: Iterable[str], last_resort: bool = True) -> Optional[str]:
    """The most error-shaped line of a command's output tail, else (``last_resort``) its
    last non-empty line, else None."""
    tail = [line.rstrip() for line in lines]
    best = next((line for line in _ranked(tail, last_resort) if line), None)
    return bound(best.strip()) if best else None


def note(err: E, **known: Any) -> E:
    """Add what is known about the failure ``err`` stands for; what was noted first wins
    (the innermost frame knows best). Returns ``err`` so ``raise note(Err(...), ...)`` works."""
    current: Dict[str, Any] = getattr(err, _ATTRIBUTE, None) or {}
    fresh = {k: v for k, v in known.items() if v is not None}
    merged = {**fresh, **current}
    if isinstance(fresh.get("free_bytes"), dict) and isinstance(current.get("free_bytes"), dict):
        # Each filesystem measured where it was known: the output's when its write
        # failed, the build directory's when the build unwound.
        merged["free_bytes"] = {**fresh["free_bytes"], **current["free_bytes"]}
    setattr(err, _ATTRIBUTE, merged)
    return err


def noted(err: BaseException) -> Dict[str, Any]:
    return dict(getattr(err, _ATTRIBUTE, None) or {})


@contextlib.contextmanager
def noting(**known: Any) -> Iterator[None]:
    """Note ``known`` on any exception leaving the block (interrupts included)."""
    try:
        yield
    except BaseException as err:
        note(err, **known)
        raise


def default_kind(err: BaseException) -> str:
    if isinstance(err, (KeyboardInterrupt, Interrupted)):
        return "interrupted"
    if isinstance(err, ElementError):
        return "elements"
    if isinstance(err, ConfigError):
        return "config"
    return "internal"


def describe(err: BaseException) -> Dict[str, Any]:
    """What ``err`` says about the failure: its notes, then what its type tells."""
    found = noted(err)
    if default_kind(err) == "interrupted":
        return {**found, "kind": "interrupted"}  # where it stopped, but not a failure there
    found.setdefault("kind", default_kind(err))
    if isinstance(err, CommandFailed):
        found.setdefault("status", err.returncode)
        found.setdefault("error", pick_error_line(err.tail))
        if err.command:
            found.setdefault("command", " ".join(err.command))
    if isinstance(err, DibError):
        if "hook" not in found:  # a silent hook or environment file has no error line
            found.setdefault("error", str(err))  # dib's own check: its message is the line
    else:
        found.setdefault("error", f"{type(err).__name__}: {err}")
    return found


def record_for(
    err: BaseException,
    message: str,
    *,
    output_dir: Optional[Path] = None,
    seconds: Optional[float] = None,
) -> FailureRecord:
    """The whole record for ``err``, measured now."""
    found = describe(err)
    free = {**_no_free_space(), **found.pop("free_bytes", {})}
    build_dir = found.pop("build_dir", None)
    if build_dir:
        for name in ("error", "command"):
            if isinstance(found.get(name), str):
                found[name] = found[name].replace(build_dir, BUILD_DIR_NAME)
    if output_dir is not None and free.get("output") is None:  # unless measured at the failure
        free["output"] = free_bytes(output_dir)
    known = {f.name for f in fields(FailureRecord)} - {"message", "seconds", "version"}
    values = {k: v for k, v in found.items() if k in known}
    rounded = None if seconds is None else round(seconds, 2)
    record = FailureRecord(**values, message=message, free_bytes=free, seconds=rounded)
    return record.bounded()


class Reporter:
    """One build's failure reporting: removes a stale record at start, writes one on failure."""

    def __init__(self, output: Path, log: logging.Logger):
        self.output = output
        self.path = path_for(output)
        self.log = log
        self.started = time.monotonic()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove the stale failure record %s: %s", self.path, err)

    def report(self, err: BaseException, message: str) -> FailureRecord:
        """Log the record line and write the file; a file that cannot be written is a warning."""
        record = record_for(
            err,
            message,
            output_dir=self.output.parent,
            seconds=time.monotonic() - self.started,
        )
        self.log.error("%s", record.log_line())
        try:
            write(record, self.path)
        except OSError as problem:
            self.log.warning("could not write the failure record %s: %s", self.path, problem)
        return record


def read_hook_detail(path: Path) -> Dict[str, Any]:
    """The ``key=value`` lines a hook process left in ``path`` (empty when none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[: 8 * MAX_TEXT]
    except OSError:
        return {}
    detail: Dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in HOOK_DETAIL_KEYS and value.strip():
            detail[key] = bound(value.strip())
    if "status" in detail:
        try:
            detail["status"] = int(detail["status"])
        except ValueError:
            del detail["status"]
    return detail


def write_hook_detail(env: Mapping[str, str], detail: Mapping[str, Any]) -> None:
    """From inside a hook process: leave ``detail`` for dib, if dib asked for it."""
    target = env.get(HOOK_DETAIL_VAR, "")
    if not target:
        return
    lines: List[str] = []
    for key in HOOK_DETAIL_KEYS:
        value = detail.get(key)
        if value is not None:
            lines.append(f"{key}={' '.join(str(value).split())}\n")
    with contextlib.suppress(OSError):
        Path(target).write_text("".join(lines), encoding="utf-8")
