#!/usr/bin/env python3
"""Extract the error messages of the tools a build runs, from the tools' own sources.

Writes ``matrix/verdict/messages/<tool>.txt``: one message per line, format specifiers
(``%s``, ``%d``, ...) kept, sorted, without duplicates. ``dib-matrix catalogue coverage``
turns each into a sample line and asks the catalogue which entry names it, so coverage is
measured against what the tools can say, not against the logs someone happened to keep.

    .venv/bin/python tests/corpus/messages.py --fetch     # download the missing sources
    .venv/bin/python tests/corpus/messages.py             # use what this machine has

Sources and the rule that keeps a message, per tool (a gettext catalogue's msgids are the
English source texts; one locale is read, any locale lists the same msgids; only the
first line of a message is kept, as a log shows it):

apt
    msgids of ``libapt-pkg6.0.mo`` and ``apt.mo``. apt's catalogue holds no call sites, so
    a message is kept when it is one sentence-like line with an error word (ERROR_WORDS:
    "Could not", "Unable to", "failed", "invalid", "not found", ...) and is neither help
    text (indented, option lists, "Usage"), a progress line (ending in "...") nor a
    warning (starting with "Warning"; this holds for every catalogue below too).
    apt prints errors as ``E: <message>``.
dpkg
    msgids of ``dpkg.mo`` that start with a lower-case letter or a ``%s`` and hold an error
    word: dpkg's ``ohshit``/``ohshite``/``warning`` texts are lower-case fragments by
    convention, its help and status texts are capitalised. Printed as
    ``dpkg: error: <message>`` (``dpkg: <message>`` for "error processing ...").
debootstrap
    every ``error N NAME "<format>"`` call in ``/usr/share/debootstrap/functions`` and
    ``/usr/sbin/debootstrap`` (warnings are not failures). ``$variables`` in the format
    become ``%s``. Printed as ``E: <message>``.
e2fsprogs
    msgids of ``e2fsprogs.mo`` (Debian package ``e2fsprogs-l10n``) with an error word,
    without e2fsck's problem descriptions (they use ``@``-abbreviations expanded at run
    time) and without the bare ``while ...`` context fragments com_err appends to an
    error. Printed as ``mke2fs: <message>``.
qemu-img
    qemu has no gettext catalogue: printable strings of the ``qemu-img`` binary that read
    as a sentence (a capitalised word, then a lower-case one, three words or more), hold
    an error word and are not "No errors ..." (its success line). Printed as
    ``qemu-img: <message>``.
grub
    msgids of ``grub.mo`` (package ``grub-common``) that start with a lower-case letter and
    hold an error word: ``grub_error``/``grub_util_error`` texts are lower-case, the help
    texts of its commands capitalised. Printed as ``grub-install: error: <message>``.
pip, tox, pytest
    from the wheels on PyPI (``pip download --no-deps``), parsed with ``ast``: the first
    argument (a string, an f-string, ``"..." % x``, ``"...".format()``, or a local
    variable assigned one) of every ``raise X(...)`` whose ``X`` ends in Error, Exception,
    Exit or is ``Skip``/``Fail``, of logging calls at ``error``/``critical``/``exception``
    level, of pytest's ``fail(...)``/``exit(...)``, and ``message=``/``msg=`` keywords
    given to such calls. f-string fields become ``%s``. Printed as ``ERROR: <message>``
    (pip's and tox 3's prefix; pytest's for usage errors).
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "matrix" / "verdict" / "messages"
LOCALE = "de"  # any translated locale: its msgids are the English originals
LOCALE_DIRS = (Path("/usr/share/locale"),)
DEB_PACKAGES = ("e2fsprogs-l10n", "grub-common")  # catalogues not installed by default
WHEELS = ("pip", "tox", "pytest")
MAX_LENGTH = 200
MIN_WORDS = 3

ERROR_WORDS = re.compile(
    r"(?i)\b(?:errors?|fail(?:ed|s|ure)?|fatal|cannot|can't|can ?not|could ?n[o']t|unable|"
    r"invalid|illegal|malformed|corrupt(?:ed)?|mismatch|missing|broken|unmet|denied|refused|"
    r"timed out|timeout|expired|unknown|unexpected|unsupported|no such|does ?n[o']t|is ?n[o']t|"
    r"not (?:found|valid|supported|signed|exist|installed|available|allowed|permitted|"
    r"possible|enough|a |an )|too (?:many|big|long|large|small|short)|exceed(?:s|ed)?|out of|"
    r"bad|wrong|impossible|problems?|abort(?:ing|ed)?|overflow|short read|read-only)\b")
HELP_TEXT = re.compile(r"^\s|^-|^usage\b|^Usage\b|\s--?[a-z][\w-]*[ =<]|\.\.\.$|\?$")
WARNING = re.compile(r"(?i)^warning\b")  # a tool's warning is no failure
FORMAT = re.compile(r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|j|z|t|L)?"
                    r"[diouxXeEfgGcsp]")
SHELL_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
RAISED = re.compile(r"(?:Error|Exception|Exit)$|^(?:Skip|Fail)$")
LOG_ERROR_CALLS = {"error", "critical", "exception", "fatal"}
PYTEST_CALLS = {"fail", "exit"}


def mo_msgids(path: Path) -> list[str]:
    """The msgids of a GNU ``.mo`` file (for a plural, the singular)."""
    data = path.read_bytes()
    order = "<" if struct.unpack("<I", data[:4])[0] == 0x950412DE else ">"
    _, count, originals, _ = struct.unpack(order + "4I", data[4:20])
    found = []
    for index in range(count):
        length, offset = struct.unpack(order + "2I", data[originals + 8 * index:][:8])
        text = data[offset:offset + length].decode("utf-8", "replace").split("\0")[0]
        if text:
            found.append(text)
    return found


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def sentence_like(message: str) -> bool:
    """One line of prose with an error word: not help text, not a progress line."""
    words = [w for w in message.split() if not FORMAT.fullmatch(w)]
    return (len(message.split()) >= MIN_WORDS and len(words) >= 2
            and len(message) <= MAX_LENGTH and not HELP_TEXT.search(message)
            and not WARNING.match(message)
            and bool(ERROR_WORDS.search(message)))


def catalogue_messages(names: Iterable[str], roots: Iterable[Path],
                       keep: Callable[[str], bool]) -> list[str]:
    """First lines of the msgids of the named catalogues that ``keep`` accepts."""
    messages = []
    for name in names:
        path = find_catalogue(name, roots)
        if path is None:
            print(f"messages: no {name}.mo (try --fetch)", file=sys.stderr)
            continue
        raw_lines = (first_line(text) for text in mo_msgids(path))
        messages += [line for line in raw_lines if line and keep(line)]
    return messages


def find_catalogue(name: str, roots: Iterable[Path]) -> Path | None:
    for root in roots:
        path = root / LOCALE / "LC_MESSAGES" / f"{name}.mo"
        if path.is_file():
            return path
    return None


def lower_case_start(message: str) -> bool:
    return bool(re.match(r"^(?:[a-z]|%s|'%s'|`%s')", message))


def e2fsprogs_message(message: str) -> bool:
    return "@" not in message and not message.startswith("while ") and sentence_like(message)


def debootstrap_messages(paths: Iterable[Path]) -> list[str]:
    """The formats of debootstrap's ``error N NAME "format" args`` calls."""
    messages = []
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = re.search(r"(?:^|[;&|]\s*|\bthen\s+|\belse\s+)error\s+\d+\s+\w+\s+(.*)$",
                              line.strip())
            if not match:
                continue
            lexer = shlex.shlex(match.group(1), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                words = list(lexer)
            except ValueError:
                continue
            if words and words[0] != "\\":  # a format continued on the next line: skipped
                text = words[0].split("\\n")[0]  # printf's \n: the first line, as elsewhere
                messages.append(SHELL_VARIABLE.sub("%s", text).strip())
    return [m for m in messages if m]


def binary_messages(path: Path, minimum: int = 12) -> list[str]:
    """Error-worded sentences among the printable strings of an executable."""
    if not path.is_file():
        print(f"messages: no {path}", file=sys.stderr)
        return []
    runs = re.findall(rb"[\x20-\x7e]{%d,}" % minimum, path.read_bytes())
    messages = []
    for raw in runs:
        text = raw.decode("ascii").strip()
        if (re.match(r"^[A-Z][a-z]*,? [a-z'%]", text) and not text.startswith("No error")
                and sentence_like(text)):
            messages.append(text)
    return messages


class _RaisedText(ast.NodeVisitor):
    """Messages given to raised errors and error-level logging calls of one module."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.assigned: dict[str, str] = {}  # local name -> the last text assigned to it

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        saved, self.assigned = self.assigned, {}
        self.generic_visit(node)
        self.assigned = saved

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815 (ast.NodeVisitor's naming)

    def visit_Assign(self, node: ast.Assign) -> None:
        text = self.text_of(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name) and text:
                self.assigned[target.id] = text
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        if isinstance(node.exc, ast.Call) and RAISED.search(callee_name(node.exc)):
            self.take(node.exc)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = callee_name(node)
        attribute = isinstance(node.func, ast.Attribute)
        if (attribute and name in LOG_ERROR_CALLS) or name in PYTEST_CALLS:
            self.take(node)
        self.generic_visit(node)

    def take(self, call: ast.Call) -> None:
        candidates = [*call.args[:1], *(k.value for k in call.keywords
                                        if k.arg in ("message", "msg", "reason"))]
        for node in candidates:
            text = self.text_of(node)
            if text:
                self.messages.append(text)

    def text_of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(part.value if isinstance(part, ast.Constant) else "%s"
                           for part in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self.text_of(node.left)
        if isinstance(node, ast.Call) and callee_name(node) == "format":
            assert isinstance(node.func, ast.Attribute)
            text = self.text_of(node.func.value)
            return re.sub(r"\{[^{}]*\}", "%s", text) if text else None
        if isinstance(node, ast.Call) and node.args:  # Text(...), _(...) wrappers
            return self.text_of(node.args[0])
        if isinstance(node, ast.Name):
            return self.assigned.get(node.id)
        return None


def callee_name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


def python_messages(wheel: Path) -> list[str]:
    """Messages raised or logged as errors by the modules of a wheel."""
    if not wheel.is_file():
        print(f"messages: no wheel {wheel} (try --fetch)", file=sys.stderr)
        return []
    messages = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.endswith(".py") or "/_vendor/" in name:
                continue  # pip's vendored libraries are not pip's own words
            try:
                tree = ast.parse(archive.read(name))
            except (SyntaxError, ValueError):
                continue
            visitor = _RaisedText()
            visitor.visit(tree)
            messages += visitor.messages
    cleaned = (" ".join(first_line(m).split()) for m in messages)
    return [m for m in cleaned if len(m.split()) >= MIN_WORDS and len(m) <= MAX_LENGTH
            and not m.startswith("%s")]


def fetch_debs(names: Iterable[str], dest: Path) -> Path:
    """``apt-get download`` each package and unpack it under ``dest/root`` (no install)."""
    root = dest / "root"
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        subprocess.run(["apt-get", "download", name], cwd=dest, check=False)
    for deb in sorted(dest.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / "usr" / "share" / "locale"


def fetch_wheels(names: Iterable[str], dest: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "-d", str(dest), *names], check=False)


def wheel_for(name: str, wheels: Path) -> Path:
    found = sorted(wheels.glob(f"{name}-*.whl"))
    return found[-1] if found else wheels / f"{name}-missing.whl"


def extract(locales: list[Path], wheels: Path) -> dict[str, list[str]]:
    """Every tool's messages, by the rules in this module's docstring."""
    return {
        "apt": catalogue_messages(("libapt-pkg6.0", "apt"), locales, sentence_like),
        "dpkg": catalogue_messages(
            ("dpkg",), locales, lambda m: lower_case_start(m) and sentence_like(m)),
        "debootstrap": debootstrap_messages(
            (Path("/usr/share/debootstrap/functions"), Path("/usr/sbin/debootstrap"))),
        "e2fsprogs": catalogue_messages(("e2fsprogs",), locales, e2fsprogs_message),
        "qemu-img": binary_messages(Path("/usr/bin/qemu-img")),
        "grub": catalogue_messages(
            ("grub",), locales, lambda m: lower_case_start(m) and sentence_like(m)),
        **{name: python_messages(wheel_for(name, wheels)) for name in WHEELS},
    }


def unique_sorted(messages: Iterable[str]) -> Iterator[str]:
    yield from sorted({" ".join(m.split()) for m in messages if m.strip()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true",
                        help="apt-get download the catalogues this machine lacks and pip "
                             "download the wheels, into a temporary directory")
    parser.add_argument("--wheels", type=Path, help="a directory holding the wheels")
    parser.add_argument("--locale-dir", type=Path, action="append", default=[],
                        help="another .../share/locale to read catalogues from (repeatable)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dib-matrix-messages-") as scratch:
        work = Path(scratch)
        locales = [*LOCALE_DIRS, *args.locale_dir]
        wheels = args.wheels or work / "wheels"
        if args.fetch:
            locales.append(fetch_debs(DEB_PACKAGES, work / "debs"))
            fetch_wheels(WHEELS, wheels)
        found = extract(locales, wheels)
    args.out.mkdir(parents=True, exist_ok=True)
    for tool, messages in found.items():
        lines = list(unique_sorted(messages))
        if not lines:
            print(f"messages: {tool}: nothing found, {tool}.txt left as it is", file=sys.stderr)
            continue
        (args.out / f"{tool}.txt").write_text("".join(f"{line}\n" for line in lines))
        print(f"{tool}: {len(lines)} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
