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
import signal
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
_TEXT_FIELDS = ("phase", "hook", "element", "error", "command", "message", "reason")

# The most error-shaped line, in rank order (see pick_error_line).
_APT_LINE = re.compile(r"(?:^|\| )(E: .*\S)")
_SPECIFIC = re.compile(
    r"No space left on device|Permission denied|Operation not permitted|command not found"
    r"|: not found\s*$|No such file or directory|Read-only file system"
    r"|Wrote only \d+ of \d+ bytes|Could not allocate block"  # tar, mkfs.ext4 -d: disk full
    r"|: unbound variable\s*$|: parameter null or not set\s*$"  # bash set -u, ${X:?}
    r"|bad interpreter|cannot execute: required file not found"  # a #! line that cannot run
    r"|Too many open files|Resource temporarily unavailable|File size limit exceeded"
    r"|CPU time limit exceeded|Argument list too long"  # resource limits (see _RESOURCE_LIMIT)
)
# dpkg's line naming the package and the maintainer script that failed (apt's "E: Sub-process
# /usr/bin/dpkg returned an error code" that follows it only says dpkg failed).
_DPKG_SCRIPT = re.compile(
    r"(?:script )?subprocess .*(?:returned error exit status|was killed by signal)")
_GENERIC = re.compile(r"\bERROR\b|\bFATAL\b|\bfatal\b|\berror:|\bError\b")

# Why a command ended (FailureRecord.reason, see reason_for).
SHELL_SIGNAL_BASE = 128  # a shell reports a child killed by signal N as exit status 128 + N
INTERPRETER_LINE_BYTES = 256  # of a script, to read its #! line
# The kernel could not start a script: bash 5.2 says "cannot execute: required file not
# found", older bash "bad interpreter", env names the program ('python3\r' for a CRLF file).
_EXEC_FAILED = re.compile(
    r"bad interpreter|cannot execute: required file not found|\benv: .*No such file or directory"
)
# What the failing exec names: the script (bash 5.2), its interpreter (older bash, shown
# with ^M for a carriage return) or the program env was asked to start.
_EXEC_NAMES = re.compile(
    r"(\S+): cannot execute: required file not found"
    r"|(\S+?)(?:\^M)?: bad interpreter"
    r"|\benv: ['\u2018\"]?(\S+?)(?:\\r)?['\u2019\"]?: No such file or directory"
)
_RESOURCE_LIMIT = re.compile(
    r"Too many open files|Resource temporarily unavailable|File size limit exceeded"
    r"|CPU time limit exceeded|Argument list too long"
)
# Signals the kernel sends for a limit (ulimit -t, ulimit -f), not for a crash or a kill.
LIMIT_SIGNALS = {"SIGXCPU": "CPU time limit exceeded", "SIGXFSZ": "File size limit exceeded"}
# The exception line ending a traceback: "ValueError: x", "json.decoder.JSONDecodeError: x".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")
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
    reason: Optional[str] = None  # why the command ended, in dib's words (see reason_for)
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
    """Candidates, best kind first: dpkg's failed maintainer script, apt/debootstrap ``E:``
    (the first, later ones are consequences), a traceback's exception, specific OS errors,
    generic error words (for these the last, closest to the failure), then
    (``last_resort``) the last line."""
    yield next((line for line in lines if _DPKG_SCRIPT.search(line)), None)
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


def signal_name(status: Optional[int]) -> Optional[str]:
    """The signal that ended a process with exit ``status``: Python's ``-N`` or a shell's
    ``128 + N`` (137 is SIGKILL, 139 SIGSEGV, 143 SIGTERM); None for an ordinary exit."""
    if not isinstance(status, int):
        return None
    number = -status if status < 0 else status - SHELL_SIGNAL_BASE
    try:
        return signal.Signals(number).name if number > 0 else None
    except ValueError:
        return None


def _interpreter_line(script: Optional[str]) -> Optional[bytes]:
    """The ``#!`` line of ``script`` (a path on this machine), or None."""
    if not script or not os.path.isfile(script):
        return None
    try:
        with open(script, "rb") as handle:
            first = handle.read(INTERPRETER_LINE_BYTES).split(b"\n", 1)[0]
    except OSError:
        return None
    return first if first.startswith(b"#!") else None


def _interpreter_reason(error: str, script: Optional[str]) -> Optional[str]:
    """Why the kernel could not start ``script`` (its path on this machine), when ``error``
    says so about this script or its interpreter: a ``#!`` line ending in a carriage
    return (a file saved with Windows line endings), or naming a program not there."""
    line = _interpreter_line(script) if _EXEC_FAILED.search(error) else None
    if line is None or script is None:
        return None
    words = [word.rstrip("\r") for word in line[2:].decode("utf-8", "replace").split()]
    program = words[0] if words else ""
    via_env = words[1] if program.endswith("/env") and len(words) > 1 else None
    said = _EXEC_NAMES.search(error)
    named = next((name for name in said.groups() if name), "") if said else ""
    if not (named.endswith("/" + os.path.basename(script)) or named in (program, via_env)):
        return None  # a command inside the script failed to start, not the script itself
    if line.endswith(b"\r"):
        return "bad #! line: Windows (CRLF) line endings in the script"
    return f"interpreter not found: {' '.join(words[:2] if via_env else words[:1])}"


def reason_for(
    status: Optional[int], error: Optional[str], script: Optional[str] = None
) -> Optional[str]:
    """Why a command (a hook, a tool) ended, from its exit status, its error line and, when
    the kernel could not start it, its ``#!`` line: None when nothing more than the status
    is known. Checked in this order: it never started, a resource limit, a signal, a
    Python exception."""
    text = error or ""
    found = _interpreter_reason(text, script) if text else None
    if found:
        return found
    limit = _RESOURCE_LIMIT.search(text)
    name = signal_name(status)
    if limit or name in LIMIT_SIGNALS:
        return f"resource limit: {limit.group(0) if limit else LIMIT_SIGNALS[name or '']}"
    if name:
        shown = f" (exit status {status})" if isinstance(status, int) and status > 0 else ""
        return f"killed by {name}{shown}"
    if _EXCEPTION_LINE.match(text):
        return f"Python exception: {text}"
    return None


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
    if "reason" not in found:
        reason = reason_for(found.get("status"), found.get("error"), found.get("command"))
        if reason:
            found["reason"] = reason
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
