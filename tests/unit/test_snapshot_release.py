"""Release and InRelease: parsing (plain and clear-signed, hostile) and gpgv checks
against a keyring, with throw-away keys made by gpg in the test (no network)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from matrix.snapshot import release
from matrix.snapshot.release import ReleaseError, SignatureError, parse_release, signed_text
from tests.gpgkeys import SigningKey, signing_key

HEX_A = "a" * 64
HEX_B = "b" * 64
HEX_C = "c" * 64

RELEASE = f"""\
Origin: Debian
Label: Debian
Suite: stable
Version: 12.5
Codename: bookworm
Changelogs: https://metadata.ftp-master.debian.org/changelogs/@CHANGEPATH@_changelog
Date: Sat, 10 Feb 2024 10:47:45 UTC
Valid-Until: Sat, 17 Feb 2024 10:47:45 UTC
Acquire-By-Hash: yes
No-Support-for-Architecture-all: Packages
Architectures: all amd64 arm64
Components: main contrib non-free-firmware
Description: Debian 12.5 Released 10 February 2024
-Weird-Field: a line that starts with a dash (gpg dash-escapes it)
MD5Sum:
 0123456789abcdef0123456789abcdef   1234 main/binary-amd64/Packages
SHA256:
 {HEX_A}  8786 main/binary-amd64/Packages.xz
 {HEX_B} 45012 main/binary-amd64/Packages
 {HEX_C}   117 main/binary-amd64/Release
 {HEX_A}     9 main/i18n/Translation-en.bz2
""".encode()

SUMS = {
    "main/binary-amd64/Packages.xz": (HEX_A, 8786),
    "main/binary-amd64/Packages": (HEX_B, 45012),
    "main/binary-amd64/Release": (HEX_C, 117),
    "main/i18n/Translation-en.bz2": (HEX_A, 9),
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SigningKey, SigningKey]]:
    """The archive's key and a stranger's (made once for the module: gpg is slow-ish)."""
    directory = tmp_path_factory.mktemp("keys")
    with signing_key(directory, "Test Archive <archive@example.invalid>") as archive, \
            signing_key(directory, "Someone Else <else@example.invalid>") as stranger:
        yield archive, stranger


@pytest.fixture(scope="module")
def inrelease(keys: tuple[SigningKey, SigningKey]) -> bytes:
    return keys[0].clearsign(RELEASE)


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert text and "\n" not in text, repr(text)
    return text


# ---------------------------------------------------------------- parsing


def test_plain_release_fields() -> None:
    parsed = parse_release(RELEASE)
    assert parsed.suite == "stable"
    assert parsed.codename == "bookworm"
    assert parsed.date == "Sat, 10 Feb 2024 10:47:45 UTC"
    assert parsed.valid_until == "Sat, 17 Feb 2024 10:47:45 UTC"
    assert parsed.components == ("main", "contrib", "non-free-firmware")
    assert parsed.architectures == ("all", "amd64", "arm64")
    assert parsed.acquire_by_hash is True
    assert parsed.sha256 == SUMS  # the MD5Sum field's lines are not mixed in
    assert parsed.lists("main/binary-amd64/Packages.xz") == (HEX_A, 8786)
    assert parsed.lists("main/binary-amd64/Packages.gz") is None


def test_real_inrelease_parses_as_its_release(inrelease: bytes) -> None:
    assert inrelease.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n")
    assert b"\n- -Weird-Field:" in inrelease  # gpg did dash-escape it
    assert signed_text(inrelease) == RELEASE  # byte for byte the Release it was made from
    assert parse_release(inrelease) == parse_release(RELEASE)


def test_crlf_line_ends_are_read(inrelease: bytes) -> None:
    crlf = inrelease.replace(b"\n", b"\r\n")
    assert signed_text(crlf) == RELEASE
    assert parse_release(RELEASE.replace(b"\n", b"\r\n")).sha256 == SUMS


def test_optional_fields_absent() -> None:
    parsed = parse_release(b"Codename: trixie\nComponents: main\n")
    assert (parsed.suite, parsed.date, parsed.valid_until) == (None, None, None)
    assert parsed.acquire_by_hash is False and parsed.sha256 == {}


@pytest.mark.parametrize("path", [
    "../../../etc/passwd", "main/../../x", "/etc/passwd", "main//Packages", "main/./Packages",
    "main/binary-amd64/", "main/\x01Packages", "main/Pack\x00ages",
])
def test_listed_paths_that_could_leave_the_suite_are_ignored(path: str) -> None:
    text = RELEASE + f" {HEX_C} 10 {path}\n".encode()
    assert parse_release(text).sha256 == SUMS


@pytest.mark.parametrize("line", [
    f" {HEX_A} notasize main/x",  # a size that is not a number
    f" {HEX_A[:-1]} 10 main/x",  # a hash one digit short
    f" {HEX_A} 10 main/x extra",  # four words
    f" {HEX_A} {'9' * 30} main/x",  # a size beyond any file
])
def test_checksum_lines_of_another_shape_are_ignored(line: str) -> None:
    assert parse_release(RELEASE + f"{line}\n".encode()).sha256 == SUMS


def test_upper_case_hex_is_read_lower() -> None:
    text = b"Suite: x\nSHA256:\n " + HEX_A.upper().encode() + b" 5 main/Packages\n"
    assert parse_release(text).sha256 == {"main/Packages": (HEX_A, 5)}


@pytest.mark.parametrize("data, why", [
    (b"", "no fields"),
    (b"\n\n  \n", "no fields"),
    (b"<html><body>502 Bad Gateway</body></html>\n", "not a 'Field: value' line"),
    (bytes(range(256)) * 4, "not a 'Field: value' line"),
    (b" continuation first\nSuite: x\n", "continuation line before any field"),
    (b"Origin: Debian\nLabel: Debian\n", "neither a Suite nor a Codename"),
    (b"Suite: a\nSuite: b\n", "given twice"),
    (b"Suite: a\nSHA256:\n x\nsha256:\n y\n", "given twice"),  # names are case-blind
    (b"Suite: stable\nDate: " + b"x" * 300 + b"\n", "the field date"),
    (b"Suite: stable\nValid-Until: a\x1b[2Jb\n", "the field valid-until"),
    (b"Suite: two words\x00\n", "the field suite"),
    (f"Suite: x\nSHA256:\n {HEX_A} 1 main/P\n {HEX_B} 1 main/P\n".encode(), "twice"),
])
def test_garbage_is_one_line_release_error(data: bytes, why: str) -> None:
    with pytest.raises(ReleaseError) as err:
        parse_release(data)
    assert why in one_line(err)


def test_too_large_is_refused_before_reading() -> None:
    with pytest.raises(ReleaseError) as err:
        parse_release(b"Suite: x\n" + b"#" * release.MAX_RELEASE)
    assert "larger than" in one_line(err)


def test_not_bytes_is_refused() -> None:
    with pytest.raises(ReleaseError):
        parse_release("Suite: x\n")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the clear-signed frame


@pytest.mark.parametrize("tamper, why", [
    # unsigned fields before the message: a lenient reader would take them for the Release
    (lambda signed: b"Suite: evil\n\n" + signed, "not a clear-signed message"),
    (lambda signed: signed + b"Suite: evil\n", "text after the signature"),
    (lambda signed: signed + signed, "text after the signature"),
    (lambda signed: signed.split(b"-----BEGIN PGP SIGNATURE-----")[0], "has no signature"),
    (lambda signed: signed.replace(b"-----END PGP SIGNATURE-----", b""), "no END PGP"),
    (lambda signed: signed.replace(b"Hash: SHA256\n\n", b"Hash: SHA256\n"), "armour header"),
    (lambda signed: signed.replace(b"- -Weird", b"-Weird"), "without dash-escaping"),
    # gpg reads the text otherwise with this header: "- " would be the text's own
    (lambda signed: signed.replace(b"Hash: SHA256\n", b"Hash: SHA256\nNotDashEscaped: yes\n"),
     "armour header"),
])
def test_text_outside_one_signed_message_is_refused(inrelease: bytes, tamper, why: str) -> None:
    hostile = tamper(inrelease)
    for read in (signed_text, parse_release):
        with pytest.raises(ReleaseError) as err:
            read(hostile)
        assert why in one_line(err)


def test_leading_blank_lines_are_allowed(inrelease: bytes) -> None:
    assert signed_text(b"\n\n" + inrelease + b"\n\n") == RELEASE


# ---------------------------------------------------------------- signatures


def test_verify_passes_with_the_signing_key(inrelease: bytes, keys, tmp_path: Path) -> None:
    release.verify(inrelease, keys[0].keyring)
    release.verify(inrelease, str(keys[0].keyring), workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # its scratch files are gone


def test_verify_fails_with_another_key(inrelease: bytes, keys) -> None:
    with pytest.raises(SignatureError) as err:
        release.verify(inrelease, keys[1].keyring)
    text = one_line(err)
    assert str(keys[1].keyring) in text
    assert "public key" in text.lower() or "no public key" in text.lower(), text


def test_verify_fails_on_changed_content(inrelease: bytes, keys) -> None:
    changed = inrelease.replace(b"Version: 12.5", b"Version: 12.6")
    with pytest.raises(SignatureError) as err:
        release.verify(changed, keys[0].keyring)
    assert "BAD signature" in one_line(err)


def test_verify_refuses_unsigned_text_around_a_good_message(inrelease: bytes, keys) -> None:
    # gpgv alone accepts this (it verifies the message and ignores the rest)
    for hostile in (b"Suite: evil\n\n" + inrelease, inrelease + b"Suite: evil\n"):
        with pytest.raises(SignatureError) as err:
            release.verify(hostile, keys[0].keyring)
        assert str(keys[0].keyring) in one_line(err)


def test_verify_refuses_a_plain_release(keys) -> None:
    with pytest.raises(SignatureError):
        release.verify(RELEASE, keys[0].keyring)


def test_verify_names_a_missing_or_odd_keyring(inrelease: bytes, tmp_path: Path) -> None:
    with pytest.raises(SignatureError) as err:
        release.verify(inrelease, tmp_path / "absent.gpg")
    assert "absent.gpg" in one_line(err)
    fifo = tmp_path / "fifo.gpg"
    os.mkfifo(fifo)
    with pytest.raises(SignatureError) as err:
        release.verify(inrelease, fifo)  # would hang gpgv: refused before
    assert "not a regular file" in one_line(err)


def test_verify_with_an_empty_keyring_fails(inrelease: bytes, tmp_path: Path) -> None:
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"")
    with pytest.raises(SignatureError):
        release.verify(inrelease, empty)


def test_verify_detached(keys) -> None:
    signature = keys[0].detach_sign(RELEASE)
    release.verify_detached(RELEASE, signature, keys[0].keyring)
    with pytest.raises(SignatureError) as err:
        release.verify_detached(RELEASE, signature, keys[1].keyring)
    assert str(keys[1].keyring) in one_line(err)
    with pytest.raises(SignatureError):
        release.verify_detached(RELEASE + b"Extra: field\n", signature, keys[0].keyring)


def test_missing_gpgv_is_a_signature_error(inrelease: bytes, keys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SignatureError) as err:
        release.verify(inrelease, keys[0].keyring)
    assert "gpgv" in one_line(err)
