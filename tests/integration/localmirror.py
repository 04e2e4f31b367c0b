"""A local copy of a Debian archive with one package's version bumped, re-signed with a
test key and served over HTTP: the "newer mirror" of the snapshot integration tests.

The copy is a directory in Debian's archive layout (``dists/<suite>/InRelease``,
``dists/<suite>/<component>/binary-<arch>/Packages{,.xz,.gz}``, ``pool/...``), e.g. a
snapshot export. :func:`bump_package` rebuilds one package's ``.deb`` with the version
``<old>+bump1``, places it in the pool beside the old one, rewrites that package's
stanza in every Packages variant of every architecture that lists it, recomputes the
Release's checksums and signs it again (``InRelease`` and ``Release.gpg``) with a key
made by :func:`make_test_key`; apt trusts the copy through that key's keyring
(``signed-by=`` or dib's ``DIB_APT_KEYRING``).

The Release of the copy never promises ``Acquire-By-Hash``: the rewritten indices
exist only under their names (no ``by-hash/`` copies), so the field is dropped and apt
(and the run's repository view) fetch them by name.

Tools: ``gpg`` (keys, signatures) and ``dpkg-deb`` (rebuilding the .deb); indices and
Release are read and written in Python (gzip, lzma and bz2 from the standard library).
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import hashlib
import http.server
import ipaddress
import lzma
import os
import socket
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from matrix.snapshot.release import ReleaseError, signed_text
from matrix.snapshot.store import Store
from tests.gpgkeys import SigningKey, signing_key

TOOL_TIMEOUT = 120.0
BUMP_SUFFIX = "+bump1"
TEST_KEY_UID = "dib-matrix test archive <archive-test@example.invalid>"
# Packages variants by suffix: how to read and how to write each (fast presets: a
# bookworm main index is ~45 MB, and apt reads any ratio).
_COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "": (bytes, bytes),
    ".gz": (gzip.decompress, partial(gzip.compress, compresslevel=6, mtime=0)),
    ".xz": (lzma.decompress, partial(lzma.compress, preset=1)),
    ".bz2": (bz2.decompress, bz2.compress),
}
# Release checksum fields and Packages checksum fields, with their hash.
_RELEASE_SUMS = {"md5sum": "md5", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}
_PACKAGE_SUMS = {"MD5sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_DROPPED_RELEASE_FIELDS = ("acquire-by-hash",)  # no by-hash copies of the rewritten files
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1


class LocalMirrorError(Exception):
    """The archive cannot be bumped as asked; the message says what is missing."""


@dataclass(frozen=True)
class TestKey:
    """A signing key (:func:`tests.gpgkeys.signing_key`) with its fingerprint. ``close()``
    (or the end of a ``with`` block) ends its gpg-agent and removes its GnuPG home."""

    __test__ = False  # not a pytest test class

    keyring: Path  # binary public keyring (gpg --export), for gpgv, apt and DIB_APT_KEYRING
    fingerprint: str
    home: Path  # GNUPGHOME holding the secret key
    signing: SigningKey
    _closing: contextlib.ExitStack

    def close(self) -> None:
        self._closing.close()

    def __enter__(self) -> TestKey:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class BumpedPackage:
    name: str
    old_version: str
    new_version: str
    filename: str  # the new .deb, relative to the archive ("pool/main/h/hello/...")


@dataclass(frozen=True)
class Served:
    url: str  # "http://<first non-loopback IPv4>:<port>" (no trailing slash)
    port: int
    directory: Path


def _tool(*argv: str, stdin: bytes | None = None) -> bytes:
    """Run a tool; its stderr in the error when it fails."""
    done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=TOOL_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise LocalMirrorError(f"{argv[0]} failed ({done.returncode}): "
                               f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def replace_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` as a new file (written beside, renamed over): an export made of
    hard links into the snapshot store must never be changed through them."""
    partial_path = path.with_name(f".{path.name}.partial")
    partial_path.write_bytes(data)
    os.replace(partial_path, path)


# --- keys -------------------------------------------------------------------------------

def make_test_key(home: Path) -> TestKey:
    """A new ed25519 signing key (no passphrase, no expiry); its public keyring is
    written in ``home``. Close it when done (it holds a gpg-agent)."""
    home.mkdir(parents=True, exist_ok=True)
    closing = contextlib.ExitStack()
    try:
        signing = closing.enter_context(signing_key(home, TEST_KEY_UID))
        fingerprint = _fingerprint(signing.gpg("--with-colons", "--list-keys", TEST_KEY_UID))
    except BaseException:
        closing.close()
        raise
    return TestKey(signing.keyring, fingerprint, signing.home, signing, closing)


def _fingerprint(colons: bytes) -> str:
    for line in colons.decode().splitlines():
        fields = line.split(":")
        if fields[0] == "fpr":
            return fields[9]
    raise LocalMirrorError("gpg listed no fingerprint for the new key")


def joined_keyring(dest: Path, *keyrings: Path) -> Path:
    """One binary keyring holding every key of ``keyrings`` (binary keyrings are packet
    sequences: they join by concatenation). For DIB_APT_KEYRING when debootstrap's suite
    stays signed by Debian and another suite of the copy is re-signed with a test key."""
    dest.write_bytes(b"".join(path.read_bytes() for path in keyrings))
    return dest


def sign_release(suite_dir: Path, release: bytes, key: TestKey) -> None:
    """Write ``Release``, ``InRelease`` (clear-signed) and ``Release.gpg`` (detached)."""
    replace_bytes(suite_dir / "Release", release)
    replace_bytes(suite_dir / "InRelease", key.signing.clearsign(release))
    replace_bytes(suite_dir / "Release.gpg", key.signing.detach_sign(release))


# --- deb822 text ------------------------------------------------------------------------

def paragraphs(text: str) -> list[list[str]]:
    """The paragraphs of a deb822 file, each as its lines (continuations kept)."""
    found: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.strip():
            found[-1].append(line)
        elif found[-1]:
            found.append([])
    return [p for p in found if p]


def field_value(paragraph: list[str], name: str) -> str | None:
    for line in paragraph:
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace() and key.strip().lower() == name.lower():
            return value.strip()
    return None


def with_fields(paragraph: list[str], values: dict[str, str]) -> list[str]:
    """``paragraph`` with each of ``values``'s one-line fields replaced in place (or
    appended when absent)."""
    pending = dict(values)
    lowered = {k.lower(): k for k in values}
    out: list[str] = []
    for line in paragraph:
        key = line.partition(":")[0].strip().lower()
        if not line[:1].isspace() and key in lowered:
            name = lowered[key]
            out.append(f"{name}: {pending.pop(name)}")
        else:
            out.append(line)
    out.extend(f"{name}: {value}" for name, value in pending.items())
    return out


# --- the archive ------------------------------------------------------------------------

def read_release(suite_dir: Path) -> str:
    """The suite's Release text: ``Release`` when present, else InRelease's signed text."""
    if (suite_dir / "Release").is_file():
        text = (suite_dir / "Release").read_text()
        if not text.strip():
            raise LocalMirrorError(f"{suite_dir}/Release is empty")
        return text
    if (suite_dir / "InRelease").is_file():
        try:
            return signed_text((suite_dir / "InRelease").read_bytes()).decode()
        except ReleaseError as err:
            raise LocalMirrorError(f"{suite_dir}/InRelease: {err}") from None
    raise LocalMirrorError(f"{suite_dir} has neither Release nor InRelease")


@dataclass
class PackagesIndex:
    """One ``<component>/binary-<arch>/Packages`` and the variants of it on disk."""

    path: str  # relative to the suite directory, without compression suffix
    variants: list[str]  # suffixes present on disk ("", ".xz", ".gz", ...)
    text: str

    def encoded(self) -> dict[str, bytes]:
        """Every variant's bytes (the uncompressed one always, for the Release)."""
        data = self.text.encode()
        return {self.path + suffix: _COMPRESSORS[suffix][1](data)
                for suffix in {"", *self.variants}}


def packages_indices(suite_dir: Path, component: str) -> list[PackagesIndex]:
    found = []
    for arch_dir in sorted((suite_dir / component).glob("binary-*")):
        variants = [s for s in _COMPRESSORS if (arch_dir / f"Packages{s}").is_file()]
        if not variants:
            continue
        first = arch_dir / f"Packages{variants[0]}"
        text = _COMPRESSORS[variants[0]][0](first.read_bytes()).decode()
        found.append(PackagesIndex(f"{component}/{arch_dir.name}/Packages", variants, text))
    return found


def stanzas_of(index: PackagesIndex, package: str) -> list[list[str]]:
    return [p for p in paragraphs(index.text) if field_value(p, "Package") == package]


def file_fields(data: bytes, present: list[str]) -> dict[str, str]:
    """Size and checksums of a .deb for its Packages stanza (SHA256 always; the
    others as the stanza had them)."""
    values = {"Size": str(len(data))}
    for name, algorithm in _PACKAGE_SUMS.items():
        if name == "SHA256" or name.lower() in present:
            values[name] = hashlib.new(algorithm, data).hexdigest()
    return values


def rebuild_deb(old: Path, new: Path, version: str, postinst: str | None = None) -> None:
    """``old`` unpacked, its control's Version set to ``version`` (and its postinst
    replaced by ``postinst`` when given), packed as ``new``."""
    with tempfile.TemporaryDirectory(prefix="bump-") as work:
        tree = Path(work) / "tree"
        _tool("dpkg-deb", "-R", str(old), str(tree))
        control = tree / "DEBIAN" / "control"
        lines = control.read_text().rstrip("\n").split("\n")
        control.write_text("\n".join(with_fields(lines, {"Version": version})) + "\n")
        if postinst is not None:
            script = tree / "DEBIAN" / "postinst"
            script.write_text(postinst)
            script.chmod(0o755)
        built = Path(work) / "new.deb"
        _tool("dpkg-deb", "--root-owner-group", "-b", str(tree), str(built))
        replace_bytes(new, built.read_bytes())


def without_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def deb_name(package: str, version: str, arch: str) -> str:
    """Debian's pool file name: the version without its epoch."""
    return f"{package}_{without_epoch(version)}_{arch}.deb"


def _bumped_stanzas(archive_dir: Path, indices: list[PackagesIndex], package: str,
                    postinst: str | None = None) -> tuple[str, str, dict[str, dict[str, str]]]:
    """Rebuild each distinct .deb of ``package``; (old version, new version,
    {old Filename: the stanza's new field values})."""
    stanzas = [s for index in indices for s in stanzas_of(index, package)]
    if not stanzas:
        raise LocalMirrorError(f"no Packages index of the suite lists {package}")
    versions = {field_value(s, "Version") for s in stanzas}
    if len(versions) != 1:
        raise LocalMirrorError(f"{package} has several versions {sorted(map(str, versions))}")
    old_version = versions.pop() or ""
    new_version = old_version + BUMP_SUFFIX
    new_fields: dict[str, dict[str, str]] = {}
    for stanza in stanzas:
        filename = field_value(stanza, "Filename") or ""
        if filename in new_fields:
            continue
        old = archive_dir / filename
        if not filename or not old.is_file():
            raise LocalMirrorError(f"{package}: {filename or 'no Filename'} is not in the pool")
        arch = field_value(stanza, "Architecture") or "all"
        new = old.with_name(deb_name(package, new_version, arch))
        rebuild_deb(old, new, new_version, postinst)
        present = [line.partition(":")[0].strip().lower() for line in stanza]
        new_fields[filename] = {"Version": new_version,
                                "Filename": new.relative_to(archive_dir).as_posix(),
                                **file_fields(new.read_bytes(), present)}
    return old_version, new_version, new_fields


def _rewrite_index(index: PackagesIndex, package: str,
                   new_fields: dict[str, dict[str, str]]) -> None:
    out = []
    for stanza in paragraphs(index.text):
        filename = field_value(stanza, "Filename") or ""
        if field_value(stanza, "Package") == package and filename in new_fields:
            stanza = with_fields(stanza, new_fields[filename])
        out.append("\n".join(stanza))
    ending = index.text[len(index.text.rstrip("\n")):]  # Debian's end with a blank line
    index.text = "\n\n".join(out) + ending


def rewritten_release(text: str, suite_dir: Path, written: dict[str, bytes]) -> bytes:
    """The Release with every checksum entry recomputed: from ``written`` (the
    rewritten indices, the uncompressed ones whether on disk or not), else from the file
    on disk; an entry of a file neither has is kept, unless it is a variant of a
    rewritten index (no longer true, dropped). Other fields kept, but Acquire-By-Hash."""
    rewritten = {path.rsplit("/", 1)[0] + "/Packages" for path in written}
    lines: list[str] = []
    algorithm = None
    for line in next(iter(paragraphs(text)), []):
        if not line[:1].isspace():
            name = line.partition(":")[0].strip().lower()
            algorithm = _RELEASE_SUMS.get(name)
            if name not in _DROPPED_RELEASE_FIELDS:
                lines.append(line)
            continue
        if algorithm is None:
            lines.append(line)
            continue
        entry = _release_entry(line, algorithm, suite_dir, written, rewritten)
        if entry:
            lines.append(entry)
    return ("\n".join(_without_empty_lists(lines)) + "\n").encode()


def _without_empty_lists(lines: list[str]) -> list[str]:
    """Leave out a checksum field whose every entry was dropped."""
    def empty(at: int) -> bool:
        name, _, value = lines[at].partition(":")
        following = lines[at + 1] if at + 1 < len(lines) else ""
        return (name.strip().lower() in _RELEASE_SUMS and not value.strip()
                and not following[:1].isspace())
    return [line for at, line in enumerate(lines) if not empty(at)]


def _release_entry(line: str, algorithm: str, suite_dir: Path, written: dict[str, bytes],
                   rewritten: set[str]) -> str | None:
    words = line.split()
    if len(words) != 3:
        return line
    path = words[2]
    if path in written:
        data = written[path]
    elif (suite_dir / path).is_file():
        data = (suite_dir / path).read_bytes()
    elif any(path.startswith(index) for index in rewritten):
        return None
    else:
        return line
    return f" {hashlib.new(algorithm, data).hexdigest()} {len(data):>16} {path}"


def bump_package(archive_dir: Path, suite: str, package: str, key: TestKey,
                 component: str = "main", postinst: str | None = None) -> BumpedPackage:
    """Give ``package`` the version ``<old>+bump1`` in ``archive_dir``'s ``suite`` and
    sign the suite again with ``key`` (see the module's docstring)."""
    suite_dir = archive_dir / "dists" / suite
    release_text = read_release(suite_dir)
    indices = [i for i in packages_indices(suite_dir, component) if stanzas_of(i, package)]
    old_version, new_version, new_fields = _bumped_stanzas(archive_dir, indices, package,
                                                           postinst)
    written: dict[str, bytes] = {}
    for index in indices:
        _rewrite_index(index, package, new_fields)
        for path, data in index.encoded().items():
            written[path] = data
            if path[len(index.path):] in index.variants:
                replace_bytes(suite_dir / path, data)
    sign_release(suite_dir, rewritten_release(release_text, suite_dir, written), key)
    first = next(iter(new_fields.values()))
    return BumpedPackage(package, old_version, new_version, first["Filename"])


def remove_pool_file(archive_dir: Path, package: str, version: str | None = None) -> str:
    """Remove ``package``'s one .deb from the pool (of ``version`` when given): the
    archive's indices still list it, as a snapshot that lacks it does. Returns its path
    relative to ``archive_dir``."""
    found = [p for p in sorted((archive_dir / "pool").rglob(f"{package}_*.deb"))
             if p.name.split("_")[0] == package
             and (version is None or p.name.split("_")[1] == without_epoch(version))]
    if len(found) != 1:
        raise LocalMirrorError(f"{len(found)} pool files of {package} "
                               f"{version or 'in any version'}: {[p.name for p in found]}")
    found[0].unlink()
    return found[0].relative_to(archive_dir).as_posix()


# --- a test archive made from scratch ---------------------------------------------------

def make_deb(dest_dir: Path, package: str, version: str, arch: str = "all",
             depends: str = "") -> Path:
    """A tiny .deb (one file under /usr/share/doc/<package>) built with dpkg-deb."""
    with tempfile.TemporaryDirectory(prefix="deb-") as work:
        tree = Path(work)
        (tree / "DEBIAN").mkdir()
        control = [f"Package: {package}", f"Version: {version}", f"Architecture: {arch}",
                   "Maintainer: dib-matrix tests <tests@example.invalid>",
                   *([f"Depends: {depends}"] if depends else []),
                   f"Description: {package}, a test package"]
        (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
        doc = tree / "usr" / "share" / "doc" / package
        doc.mkdir(parents=True)
        (doc / "README").write_text(f"{package} {version}\n")
        dest_dir.mkdir(parents=True, exist_ok=True)
        deb = dest_dir / deb_name(package, version, arch)
        _tool("dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb))
    return deb


def build_archive(archive_dir: Path, suite: str, debs: list[Path], key: TestKey,
                  component: str = "main", arches: tuple[str, ...] = ("amd64",)) -> None:
    """A signed one-component archive of ``debs`` (already under ``archive_dir``/pool):
    for each of ``arches`` a Packages (.xz, .gz) of the debs of that architecture or
    ``all``; a Release with MD5Sum and SHA256 (and ``Acquire-By-Hash``, as Debian's),
    InRelease and Release.gpg."""
    stanzas = {deb: _stanza(archive_dir, deb) for deb in debs}
    suite_dir = archive_dir / "dists" / suite
    files: dict[str, bytes] = {}
    for arch in arches:
        text = "\n".join(s for s in stanzas.values()
                         if field_value(s.split("\n"), "Architecture") in (arch, "all"))
        index = PackagesIndex(f"{component}/binary-{arch}/Packages", ["", ".xz", ".gz"], text)
        files.update(index.encoded())
    for path, data in files.items():
        (suite_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (suite_dir / path).write_bytes(data)
    lines = ["Origin: dib-matrix tests", f"Suite: {suite}", f"Codename: {suite}",
             "Date: Sat, 01 Jun 2024 00:00:00 UTC", f"Architectures: {' '.join(arches)}",
             f"Components: {component}", "Acquire-By-Hash: yes"]
    for field, algorithm in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(f"{field}:")
        lines.extend(f" {hashlib.new(algorithm, data).hexdigest()} {len(data):>16} {path}"
                     for path, data in sorted(files.items()))
    sign_release(suite_dir, ("\n".join(lines) + "\n").encode(), key)


def _stanza(archive_dir: Path, deb: Path) -> str:
    control = _tool("dpkg-deb", "-f", str(deb)).decode().rstrip("\n").split("\n")
    data = deb.read_bytes()
    extra = {"Filename": deb.relative_to(archive_dir).as_posix(),
             **file_fields(data, ["md5sum"])}
    return "\n".join(with_fields(control, extra)) + "\n"


# --- serving ----------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def first_ipv4() -> str:
    """This machine's first non-loopback IPv4 address on an interface that is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)[0]
                raw = fcntl.ioctl(sock, _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            address = ipaddress.IPv4Address(raw[20:24])
            if flags & _IFF_UP and not address.is_loopback:
                return str(address)
    raise LocalMirrorError("this machine has no non-loopback IPv4 address")


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[Served]:
    """``directory`` over HTTP on every address, a free port; the URL names this
    machine's first non-loopback IPv4 address (a loopback URL would skip the run's
    proxy: 127.0.0.1 is in its no_proxy)."""
    handler = partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="localmirror", daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield Served(url=f"http://{first_ipv4()}:{port}", port=port, directory=directory)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- a snapshot that lacks one .deb -------------------------------------------------------

def drop_from_snapshot(store_root: Path, name: str, package: str) -> str:
    """Make the saved snapshot ``name`` lack ``package``'s one pool file, as a snapshot
    saved while that .deb could not be had: the manifest no longer names it and lists
    it as missing (the blob stays: other snapshots may share it). Returns its URL."""
    store = Store(store_root)
    snapshot = store.load(name)
    found = [(uri, path) for uri, archive in sorted(snapshot.archives.items())
             for path in sorted(archive.files)
             if path.startswith("pool/") and path.rsplit("/", 1)[-1].split("_")[0] == package]
    if len(found) != 1:
        raise LocalMirrorError(f"snapshot {name} holds {len(found)} pool files of {package}: "
                               f"{[path for _, path in found]}")
    uri, path = found[0]
    del snapshot.archives[uri].files[path]
    snapshot.missing.setdefault(uri, []).append(path)
    store.save(snapshot)
    return f"{uri}/{path}"
