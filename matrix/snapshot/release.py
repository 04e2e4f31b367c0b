"""A suite's Release and InRelease files: what they say, and whether their signature holds.

The Release file names everything else of a suite by sha256, so it is the root of a
snapshot's trust: it is parsed strictly where it matters and leniently elsewhere.
Unknown fields are ignored; a field given twice, a line that is neither a field nor a
continuation, or text outside the signed part of an InRelease is refused
(ReleaseError), because two readers must never disagree on what was signed (the
OpenPGP cleartext framework lets unsigned text sit before and after the signed
message, which apt also refuses). A path listed in the SHA256 field is never trusted:
one that could leave ``dists/<suite>/`` is left out.

Signatures are checked with ``gpgv`` against one keyring, through ``dib.spawn``, with
``--ignore-time-conflict`` as apt and debootstrap do (a mirror's clock may be ahead).

dib has its own parsers of parts of this (``dib.debprefetch.parse_release_sha256``,
``dib.suiteview.signed_text``) for its standard-library-only life inside containers;
they take the first SHA256 section leniently and do not refuse text outside the
signed part, which is right for a build that gpgv has already gated but not for the
files a snapshot replays later.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dib import spawn

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MAX_RELEASE = 16 << 20  # bytes: Debian's largest InRelease is ~0.5 MiB
MAX_VALUE = 256  # characters of a single-line field kept (Suite, Date, ...)
GPGV_TIMEOUT = 60.0  # seconds

BEGIN_MESSAGE = "-----BEGIN PGP SIGNED MESSAGE-----"
BEGIN_SIGNATURE = "-----BEGIN PGP SIGNATURE-----"
END_SIGNATURE = "-----END PGP SIGNATURE-----"

_FIELD = re.compile(r"([!-9;-~][!-9;-~]*):(.*)")  # deb822: a name without ':' or space
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_SIZE = re.compile(r"[0-9]{1,19}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ReleaseError(Exception):
    """A Release or InRelease that cannot be read (one line)."""


class SignatureError(ReleaseError):
    """A signature that does not verify against the keyring (one line naming it)."""


@dataclass(frozen=True)
class ReleaseFile:
    suite: str | None
    codename: str | None
    date: str | None
    valid_until: str | None
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    acquire_by_hash: bool = False
    # path relative to dists/<suite>/ ("main/binary-amd64/Packages.xz") -> (sha256, size)
    sha256: dict[str, tuple[str, int]] = field(default_factory=dict)

    def lists(self, path: str) -> tuple[str, int] | None:
        """(sha256, size) of ``path`` (relative to dists/<suite>/), None when not listed."""
        return self.sha256.get(path)


# ---------------------------------------------------------------- the clear-signed frame


def signed_text(inrelease: bytes) -> bytes:
    """The text an InRelease's signature covers, dash-escaping undone, line ends LF and
    a final newline: byte for byte the Release file it was made from.

    ReleaseError unless ``inrelease`` is one clear-signed message and nothing else
    (blank lines aside) before or after it."""
    lines = _lines(_bounded(inrelease))
    at = _skip_blank(lines, 0)
    if at == len(lines) or lines[at] != BEGIN_MESSAGE:
        raise ReleaseError("not a clear-signed message (no BEGIN PGP SIGNED MESSAGE line)")
    at = _armour_headers_end(lines, at + 1)
    body: list[str] = []
    for index in range(at, len(lines)):
        line = lines[index]
        if line == BEGIN_SIGNATURE:
            _check_signature_block(lines, index)
            return "".join(f"{text}\n" for text in body).encode("utf-8", "surrogateescape")
        if line.startswith("- "):
            line = line[2:]
        elif line.startswith("-"):
            raise ReleaseError(f"line {index + 1} of the signed text starts with '-' "
                               "without dash-escaping")
        body.append(line)
    raise ReleaseError("the clear-signed message has no signature")


def _armour_headers_end(lines: list[str], at: int) -> int:
    """The index after the blank line that ends the armour headers. Only ``Hash:`` is
    taken, as apt does: another (``NotDashEscaped:``) would make gpg read the text
    otherwise than this module."""
    for index in range(at, min(len(lines), at + 32)):
        if not lines[index].strip():
            return index + 1
        if not lines[index].startswith("Hash: "):
            raise ReleaseError(f"line {index + 1}: not a 'Hash:' armour header of a signed "
                               "message")
    raise ReleaseError("the clear-signed message's headers do not end with a blank line")


def _check_signature_block(lines: list[str], begin: int) -> None:
    """The signature block ends with its END line and only blank lines follow."""
    for index in range(begin + 1, len(lines)):
        if lines[index] == END_SIGNATURE:
            rest = _skip_blank(lines, index + 1)
            if rest != len(lines):
                raise ReleaseError(f"line {rest + 1}: text after the signature")
            return
        if lines[index].startswith("-----"):
            raise ReleaseError(f"line {index + 1}: a second armour line inside the signature")
    raise ReleaseError("the signature has no END PGP SIGNATURE line")


def _bounded(data: bytes) -> bytes:
    if not isinstance(data, (bytes, bytearray)):
        raise ReleaseError(f"a Release is bytes, not {type(data).__name__}")
    if len(data) > MAX_RELEASE:
        raise ReleaseError(f"larger than {MAX_RELEASE} bytes ({len(data)})")
    return bytes(data)


def _lines(data: bytes) -> list[str]:
    """The lines of ``data`` without their ends (LF or CRLF); undecodable bytes kept as
    surrogates, so the signed text comes back byte for byte."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _skip_blank(lines: list[str], at: int) -> int:
    while at < len(lines) and not lines[at].strip():
        at += 1
    return at


# ---------------------------------------------------------------- the fields


def parse_release(data: bytes) -> ReleaseFile:
    """The fields of a Release, or of the signed part of an InRelease (not verified
    here: see :func:`verify`); ReleaseError on anything that is not one."""
    data = _bounded(data)
    if b"-----BEGIN PGP" in data:  # signed: only the signed part is read, whatever precedes
        data = signed_text(data)
    fields = _fields(_lines(data))
    if "suite" not in fields and "codename" not in fields:
        raise ReleaseError("not a Release file: it has neither a Suite nor a Codename field")
    return ReleaseFile(
        suite=_single(fields, "suite"),
        codename=_single(fields, "codename"),
        date=_single(fields, "date"),
        valid_until=_single(fields, "valid-until"),
        components=tuple(_words(fields, "components")),
        architectures=tuple(_words(fields, "architectures")),
        acquire_by_hash=(_single(fields, "acquire-by-hash") or "").lower() == "yes",
        sha256=_checksums(fields.get("sha256", "")),
    )


def _fields(lines: list[str]) -> dict[str, str]:
    """The first paragraph's fields by lower-case name; a multi-line value keeps its
    lines after the first, each after a newline."""
    fields: dict[str, str] = {}
    name = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            if fields:
                break  # the end of the paragraph: a Release has only one
            continue
        if line[0] in " \t":
            if name is None:
                raise ReleaseError(f"line {number}: a continuation line before any field")
            fields[name] += "\n" + line
            continue
        match = _FIELD.fullmatch(line)
        if match is None:
            raise ReleaseError(f"line {number}: not a 'Field: value' line: {line[:60]!r}")
        name = match.group(1).lower()
        if name in fields:
            raise ReleaseError(f"line {number}: the field {match.group(1)} is given twice")
        fields[name] = match.group(2).strip()
    if not fields:
        raise ReleaseError("no fields: an empty Release")
    return fields


def _single(fields: dict[str, str], name: str) -> str | None:
    """A one-line field's value (None when absent or empty); ReleaseError when it is
    long, multi-line or not printable."""
    value = fields.get(name)
    if not value:
        return None
    if len(value) > MAX_VALUE or "\n" in value or not value.isprintable():
        raise ReleaseError(f"the field {name} is not one printable line of at most "
                           f"{MAX_VALUE} characters")
    return value


def _words(fields: dict[str, str], name: str) -> list[str]:
    """A field that is a list of words (Components, Architectures)."""
    value = fields.get(name, "")
    if len(value) > 64 * MAX_VALUE or _CONTROL.search(value.replace("\n", " ")):
        raise ReleaseError(f"the field {name} is too long or not printable")
    return value.split()


def _checksums(value: str) -> dict[str, tuple[str, int]]:
    """The ``SHA256`` field: `` <hex> <size> <path>`` lines; a line of another shape or
    a path that could leave the suite's directory is left out, a path listed twice with
    different sums refused."""
    sums: dict[str, tuple[str, int]] = {}
    for line in value.split("\n"):
        words = line.split()
        if len(words) != 3 or not _HEX.fullmatch(words[0]) or not _SIZE.fullmatch(words[1]):
            continue
        path = words[2]
        if not safe_listed_path(path):
            continue
        entry = (words[0].lower(), int(words[1]))
        if sums.setdefault(path, entry) != entry:
            raise ReleaseError(f"the SHA256 field lists {path[:80]!r} twice with different sums")
    return sums


def safe_listed_path(path: str) -> bool:
    """A path a Release may list: relative, no ``..``/``.``/empty component, no NUL or
    control character (it is joined to ``dists/<suite>/`` later)."""
    if not path or path.startswith("/") or _CONTROL.search(path) or len(path) > 1024:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


# ---------------------------------------------------------------- signatures


def verify(inrelease: bytes, keyring: Path | str, workdir: Path | None = None) -> None:
    """Check the InRelease's signature with ``gpgv`` against ``keyring``: nothing when a
    key of it made a good signature; SignatureError naming the keyring and gpgv's last
    line otherwise. The message must be one clear-signed message and nothing else."""
    try:
        signed_text(inrelease)
    except ReleaseError as err:
        raise SignatureError(f"InRelease not verified against {keyring}: {err}") from None
    with tempfile.TemporaryDirectory(prefix="gpgv.", dir=workdir) as name:
        scratch = Path(name)
        message = scratch / "InRelease"
        message.write_bytes(inrelease)
        _gpgv(keyring, scratch, [str(message)], "InRelease")


def verify_detached(release: bytes, signature: bytes, keyring: Path | str,
                    workdir: Path | None = None) -> None:
    """:func:`verify` for a Release and its detached signature (Release.gpg)."""
    with tempfile.TemporaryDirectory(prefix="gpgv.", dir=workdir) as name:
        scratch = Path(name)
        (scratch / "Release").write_bytes(_bounded(release))
        (scratch / "Release.gpg").write_bytes(_bounded(signature))
        _gpgv(keyring, scratch, [str(scratch / "Release.gpg"), str(scratch / "Release")],
              "Release")


def _gpgv(keyring: Path | str, scratch: Path, files: list[str], what: str) -> None:
    """Run gpgv on ``files`` with only ``keyring`` trusted; SignatureError unless it
    reports a good signature (GOODSIG: not expired, not revoked) and exits 0."""
    keyring_path = _keyring(keyring, what)
    home = scratch / "gnupg"  # never the user's ~/.gnupg, whose trustedkeys gpgv would add
    home.mkdir(mode=0o700)
    argv = ["gpgv", "--homedir", str(home), "--status-fd", "1", "--keyring", keyring_path,
            "--ignore-time-conflict", *files]
    try:
        result = spawn.run(argv, timeout=GPGV_TIMEOUT, errors_apart=True,
                           env=spawn.child_env({"GNUPGHOME": str(home)}))
    except OSError as err:
        raise SignatureError(f"{what} not verified against {keyring}: gpgv: "
                             f"{err.strerror or err}") from None
    if result.timed_out:
        raise SignatureError(f"{what} not verified against {keyring}: gpgv gave no answer "
                             f"within {GPGV_TIMEOUT:.0f} s")
    status = result.text.splitlines()
    if result.returncode != 0 or not any(line.startswith("[GNUPG:] GOODSIG ") for line in status):
        last = (result.errors.strip().splitlines() or status or ["no output"])[-1]
        raise SignatureError(f"{what} not verified against {keyring}: "
                             f"{_printable(last)[:200]}")


def _keyring(keyring: Path | str, what: str) -> str:
    """``keyring`` as an absolute path (gpgv looks a bare name up in its home), checked to
    be a regular file (a FIFO would hang gpgv)."""
    path = os.path.abspath(keyring)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise SignatureError(f"{what} not verified: keyring {keyring}: "
                             f"{err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise SignatureError(f"{what} not verified: keyring {keyring} is not a regular file")
    return path


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)
