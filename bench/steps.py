"""Where a build's time went, read from its log (builds are mostly external tools)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \| (.*)$")

# dib's tree-cache lines, whole lines of its own (a hook's output is logged behind
# "<phase>/<hook> | " and so can never read as one of these).
_KEY = r"([0-9A-Za-z_-]{4,64})"
_SECONDS = r"(\d{1,9}(?:\.\d{1,9})?)"
_PHASES = r"((?:[a-z0-9-]+\.d )*[a-z0-9-]+\.d)"
CACHE_HIT = re.compile(rf"tree cache: hit {_KEY} \({_PHASES} from the cache, "
                       rf"restored in {_SECONDS} s\)")
CACHE_MISS = re.compile(rf"tree cache: miss {_KEY}: (.+)")
CACHE_STORED = re.compile(rf"tree cache: stored {_KEY} \((\d{{1,9}}) MiB in {_SECONDS} s\)")
CACHE_OFF = re.compile(r"tree cache: off: (.+)")
HOOK_FINISHED = re.compile(rf"finished (\S+) in {_SECONDS} s")
PHASE_START = re.compile(r"---- phase ([a-z0-9-]+\.d): \d+ script\(s\)")
REASON_LIMIT = 140  # a reason copied from a log, in a one-line profile entry
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # a terminal's colours


def _stamped(log: Path) -> list[tuple[float, str]]:
    """(seconds since the first line, text) of every time-stamped log line."""
    lines = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    for raw in text.splitlines():
        match = STAMP.match(raw)
        if match:
            try:
                when = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            except ValueError:  # a stamp-shaped line that is no date (month 13)
                continue
            lines.append((when, match[2]))
    return [(when - lines[0][0], line) for when, line in lines] if lines else []


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` from a log as one printable line of at most ``limit`` characters."""
    flat = " ".join(_UNPRINTABLE.sub(" ", ANSI_ESCAPE.sub("", text)).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


@dataclass(frozen=True)
class TreeCache:
    """What dib's log says its installed-tree cache did in one build."""

    outcome: str  # "hit", "miss", "off"; "" when the log has no tree-cache line
    key: str = ""
    restored: tuple[str, ...] = ()  # phases that came from the cache (a hit)
    seconds: float = 0.0  # restoring it (a hit)
    why: str = ""  # a miss's or an off's reason, one bounded line
    stored_mib: int | None = None  # a miss that stored its tree: its size
    store_seconds: float = 0.0
    ran: tuple[str, ...] = ()  # phases that ran in this build, in order

    def summary(self) -> str:
        if self.outcome == "hit":
            return f"tree cache: restored ({' '.join(self.restored)} from the cache)"
        if self.outcome == "miss":
            return f"tree cache: miss ({self.why}), every phase ran"
        if self.outcome == "off":
            return f"tree cache: off ({self.why})"
        return "tree cache: no tree-cache line in the log"


def tree_cache(lines: list[tuple[float, str]]) -> TreeCache:
    """The last tree-cache outcome in a log (an appended log's latest build) and the
    phases that ran; a restored phase that also logs a start is not counted as run."""
    found = TreeCache("")
    for _, text in lines:
        found = _cache_line(text, found)
    started = [m[1] for m in (PHASE_START.fullmatch(text) for _, text in lines) if m]
    ran = tuple(p for p in dict.fromkeys(started) if p not in found.restored)
    return replace(found, ran=ran)


def _cache_line(text: str, found: TreeCache) -> TreeCache:
    if match := CACHE_HIT.fullmatch(text):
        return TreeCache("hit", match[1], tuple(match[2].split()), float(match[3]))
    if match := CACHE_MISS.fullmatch(text):
        return TreeCache("miss", match[1], why=one_line(match[2]))
    if match := CACHE_OFF.fullmatch(text):
        return TreeCache("off", why=one_line(match[1]))
    if (match := CACHE_STORED.fullmatch(text)) and found.outcome == "miss":
        return replace(found, stored_mib=int(match[2]), store_seconds=float(match[3]))
    return found


def _hook_seconds(lines: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """(seconds, "<phase>/<hook>") of every hook dib finished."""
    matches = (HOOK_FINISHED.fullmatch(text) for _, text in lines)
    return [(float(match[2]), match[1]) for match in matches if match]


def slowest_steps(log: Path, top: int = 6) -> list[str]:
    """dib logs 'finished <hook> in N s' per hook, then makes the filesystem and converts it;
    a warm build restores its installed tree instead of running the first phases."""
    lines = _stamped(log)
    if not lines:
        return ["no time-stamped lines in " + str(log)]
    steps = _hook_seconds(lines)
    cache = tree_cache(lines)
    if cache.outcome == "hit":
        steps.append((cache.seconds, cache.summary()))
    if cache.stored_mib is not None:
        steps.append((cache.store_seconds, f"tree cache: stored ({cache.stored_mib} MiB)"))
    hooks_end = max((when for when, text in lines if text.startswith("finished ")), default=0)
    made = next((when for when, text in lines if text.startswith("ext4 filesystem")), None)
    if made is not None:
        steps.append((made - hooks_end, "filesystem image (mkfs.ext4 -d)"))
        steps.append((lines[-1][0] - made, "qcow2 conversion (qemu-img convert -c)"))
    steps.append((lines[-1][0], "whole build"))
    listed = [f"{seconds:7.1f} s  {name}" for seconds, name in sorted(steps, reverse=True)[:top]]
    return listed + _cache_notes(cache)


def _cache_notes(cache: TreeCache) -> list[str]:
    if cache.outcome == "hit":
        return [f"still ran: {' '.join(cache.ran) or 'no phase'}"]
    if cache.outcome in ("miss", "off"):
        return [cache.summary()]
    return []


def cache_profile(log: Path) -> list[str]:
    """A warm build in a few lines: which phases its tree cache gave, and what still ran
    (each phase with the seconds of its hooks), then making the image."""
    lines = _stamped(log)
    if not lines:
        return ["no time-stamped lines in " + str(log)]
    cache = tree_cache(lines)
    per_phase: dict[str, float] = {}
    for seconds, hook in _hook_seconds(lines):
        phase = hook.split("/", 1)[0]
        per_phase[phase] = per_phase.get(phase, 0.0) + seconds
    ran = ", ".join(f"{phase} {per_phase.get(phase, 0.0):.1f} s" for phase in cache.ran)
    if cache.outcome == "hit":
        head = [f"from the cache: {' '.join(cache.restored)} "
                f"(restored in {cache.seconds:.1f} s, key {cache.key})"]
    elif cache.outcome == "miss":
        stored = ("" if cache.stored_mib is None
                  else f"; stored {cache.stored_mib} MiB in {cache.store_seconds:.1f} s")
        head = [f"from the cache: nothing, a miss ({cache.why}){stored}"]
    elif cache.outcome == "off":
        head = [f"from the cache: nothing, the cache is off ({cache.why})"]
    else:
        head = ["from the cache: nothing, the log has no tree-cache line"]
    return [*head, f"still ran: {ran or 'no phase'}",
            f"whole build: {lines[-1][0]:.1f} s"]


def dib_slowest(log: Path, top: int = 6) -> list[str]:
    """diskimage-builder prints a PROFILING table (script, seconds) after every phase."""
    lines = _stamped(log)
    steps = []
    phase = ""
    for _, text in lines:
        match = re.match(r"dib-run-parts Target: (\S+)", text)
        if match:
            phase = match[1]
            continue
        match = re.fullmatch(rf"dib-run-parts (\S+)\s+{_SECONDS}", text)
        if match:
            steps.append((float(match[2]), f"{phase}/{match[1]}"))
    convert = [when for when, text in lines
               if text.startswith(("Converting image using qemu-img", "Image file "))]
    if len(convert) == 2:  # the conversion is outside its tables
        steps.append((convert[1] - convert[0], "qcow2 conversion (qemu-img convert)"))
    if lines:
        steps.append((lines[-1][0], "whole build"))
    return [f"{seconds:7.1f} s  {name}" for seconds, name in sorted(steps, reverse=True)[:top]]
