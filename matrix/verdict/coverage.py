"""How much of what the tools can say the catalogue names (``dib-matrix catalogue coverage``).

The bundled ``messages/<tool>.txt`` hold the error messages of apt, dpkg, debootstrap,
e2fsprogs, qemu-img, grub, pip, tox and pytest, taken from the tools' own sources
(``tests/corpus/messages.py`` says from where and by which rule). Each message's format
becomes a sample line as the tool prints it (its prefix, ``%s`` replaced by a plausible
token) and is judged as a log line is. A message is *precise* when an entry that names a
cause names it, *generic* when only a catch-all entry does (``generic: true``: the tool
failed, the message is the legend), and *unnamed* when nothing does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from matrix.verdict.catalogue import ANY, Catalogue
from matrix.verdict.classify import line_hits

# How each tool prints an error: the sample line is its message in this frame.
LINE_FORMATS: Mapping[str, str] = {
    "apt": "E: {}",
    "dpkg": "dpkg: error: {}",
    "debootstrap": "E: {}",
    "e2fsprogs": "mke2fs: {}",
    "qemu-img": "qemu-img: {}",
    "grub": "grub-install: error: {}",
    "pip": "ERROR: {}",
    "tox": "ERROR: {}",
    "pytest": "ERROR: {}",
}
DPKG_OWN_PREFIX = re.compile(r"^(?:error|warning) ")  # "error processing package %s": as is
_CONVERSION = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|j|z|t|L)?([diouxXeEfgGcsp%])")
# A %s after one of these words (or in quotes) stands for a path.
_PATH_CONTEXT = re.compile(
    r"(?i)(?:\b(?:file|files|directory|dir|lock|path|archive|device|mount(?:point)?|target|"
    r"script|keyring|image|conffile|from|to|in|at|open|stat|create|read|write|remove|"
    r"rename|link)|['`\"\u2018(])[:\s]*$")
_TOKENS = {"d": "42", "i": "42", "u": "42", "o": "52", "x": "2a", "X": "2A", "c": "x",
           "e": "1.5", "E": "1.5", "f": "1.5", "g": "1.5", "G": "1.5", "p": "0x2a", "%": "%"}
WORD_TOKEN = "example"
PATH_TOKEN = "/var/lib/example"


class Outcome(str, enum.Enum):
    PRECISE = "precise"
    GENERIC = "generic"
    UNNAMED = "unnamed"


@dataclass(frozen=True)
class MessageVerdict:
    tool: str
    message: str
    sample: str
    outcome: Outcome
    rule_id: str | None  # the entry that names the sample line, None when unnamed


@dataclass(frozen=True)
class ToolCoverage:
    tool: str
    verdicts: tuple[MessageVerdict, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(v.outcome is outcome for v in self.verdicts)

    def share(self, outcome: Outcome) -> float:
        return self.count(outcome) / len(self.verdicts) if self.verdicts else 0.0

    def listed(self, outcome: Outcome) -> list[MessageVerdict]:
        return [v for v in self.verdicts if v.outcome is outcome]


def bundled_messages() -> dict[str, list[str]]:
    """tool -> its messages, from the bundled ``messages/<tool>.txt``."""
    folder = resources.files("matrix.verdict") / "messages"
    found: dict[str, list[str]] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".txt"):
            lines = entry.read_text(encoding="utf-8").splitlines()
            found[entry.name[:-4]] = [line for line in lines if line.strip()]
    return found


def sample_line(tool: str, message: str) -> str:
    """``message`` as ``tool`` prints it, its format specifiers filled in."""
    frame = LINE_FORMATS.get(tool, "{}")
    if tool == "dpkg" and DPKG_OWN_PREFIX.match(message):
        frame = "dpkg: {}"
    return frame.format(fill_format(message))


def fill_format(message: str) -> str:
    """printf specifiers replaced by tokens: a path where the words before call for one."""
    parts: list[str] = []
    position = 0
    for match in _CONVERSION.finditer(message):
        parts.append(message[position:match.start()])
        conversion = match.group(1)
        if conversion == "s":
            before = "".join(parts)[-24:]
            parts.append(PATH_TOKEN if _PATH_CONTEXT.search(before) else WORD_TOKEN)
        else:
            parts.append(_TOKENS.get(conversion, WORD_TOKEN))
        position = match.end()
    parts.append(message[position:])
    return "".join(parts)


def coverage(catalogue: Catalogue, messages: Mapping[str, Sequence[str]] | None = None,
             tools: Iterable[str] = ()) -> list[ToolCoverage]:
    """Each tool's messages judged by ``catalogue`` (every entry in scope, as for a log
    of unknown row), tools in name order; ``tools`` keeps only those named."""
    messages = bundled_messages() if messages is None else messages
    wanted = set(tools)
    rules = catalogue.scoped(ANY, ANY)
    result = []
    for tool in sorted(messages):
        if wanted and tool not in wanted:
            continue
        texts = list(messages[tool])
        samples = [sample_line(tool, text) for text in texts]
        named = {number: matched[0] for number, _, matched in line_hits(samples, rules)}
        verdicts = []
        for number, (text, sample) in enumerate(zip(texts, samples), 1):
            rule = named.get(number)
            outcome = (Outcome.UNNAMED if rule is None
                       else Outcome.GENERIC if rule.generic else Outcome.PRECISE)
            verdicts.append(MessageVerdict(tool, text, sample, outcome,
                                           rule.id if rule else None))
        result.append(ToolCoverage(tool, tuple(verdicts)))
    return result
