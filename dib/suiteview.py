"""A small local copy of one suite for debootstrap: its index cut down to what it can use.

debootstrap spends most of a minbase build reading the suite's full Packages index
(~60,000 stanzas) with shell and perl, again and again: retrieving and unpacking it,
resolving the base's dependencies, writing dpkg's ``available`` file, resolving each
pre-dependency. On a bookworm ``debian-minimal`` base that was ~16 of its 27 s;
installing the ~150 packages was the rest.

:func:`prepare` gives debootstrap a suite of its own instead, under a work directory,
as a ``file://`` mirror:

- the mirror's InRelease, checked with ``gpgv`` against the keyring debootstrap
  checks it with (``DIB_APT_KEYRING``, else the one its script names; no keyring or
  no gpgv: no view, plain debootstrap as before);
- each component's Packages index, checked against that InRelease's SHA256, cut down
  to every package debootstrap could reach from where it starts (its required
  packages, apt, --include, ...) through Depends and Pre-Depends, taking *every*
  alternative and every provider of a virtual name: a superset of what its resolver
  can pick, so that it picks exactly what it picks from the full index (a name is a
  real package in the cut index exactly when it is one in the full index);
- a Release file (the original's fields, SHA256 of the cut indices), so debootstrap
  runs with ``--no-check-gpg`` on this already verified copy;
- the .debs its resolver picks (:func:`dib.debprefetch.resolve`), downloaded in
  parallel, checked against the index and placed in the target's apt archives, where
  debootstrap finds and validates them itself.

A package debootstrap wants that was not downloaded makes it fail ("Couldn't download
package"); :mod:`dib.bootstrap` then starts over with plain debootstrap against the
real mirror: slower, never different. After debootstrap, :func:`restore_lists` puts
the real mirror's InRelease, Release, Release.gpg and full Packages in the base's
``/var/lib/apt/lists`` under the real mirror's names, as plain debootstrap leaves them.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from dib import debprefetch, spawn
from dib.debprefetch import PackageIndex, PrefetchError

LOG = logging.getLogger("dib")

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
GPGV_TIMEOUT_SECONDS = 60.0
LISTS = Path("var/lib/apt/lists")
# Release fields that describe files this copy does not carry.
_CHECKSUM_FIELDS = ("md5sum", "sha1", "sha256", "sha512", "acquire-by-hash")


class ViewError(Exception):
    """No local view: plain debootstrap instead (the reason is logged)."""


@dataclass(frozen=True)
class View:
    """A prepared local suite: debootstrap's mirror URL and what to put back after it."""

    url: str
    inrelease: bytes
    indices: Dict[str, Path]  # component -> the full (uncompressed) Packages index
    wanted: int  # .debs placed for debootstrap
    seconds: float


def enabled(env: Mapping[str, str], mirror: str) -> bool:
    """Online, http(s) mirrors, unless DIB_DEBOOTSTRAP_LOCAL_SUITE=0."""
    value = env.get("DIB_DEBOOTSTRAP_LOCAL_SUITE", "1").strip().lower()
    return value not in ("0", "no", "false") and debprefetch.enabled(
        {k: v for k, v in env.items() if k != "DIB_DEBOOTSTRAP_PREFETCH"}, mirror)


def script_keyring(script: Path) -> str:
    """The keyring debootstrap's suite script names (``keyring PATH``), or Debian's."""
    try:
        text = script.read_text(errors="replace")
    except OSError:
        return DEFAULT_KEYRING
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "keyring":
            return words[1]
    return DEFAULT_KEYRING


def keyring_for(script: Path, apt_keyring: Optional[Path] = None) -> str:
    """The keyring the InRelease must verify against: debootstrap's, which is
    ``DIB_APT_KEYRING`` when set (its ``--keyring``), else the one its script names."""
    return str(apt_keyring) if apt_keyring else script_keyring(script)


def verify_inrelease(data: bytes, keyring: str, workdir: Path) -> None:
    """``gpgv`` over the InRelease as debootstrap checks a Release; ViewError if not good."""
    if not Path(keyring).is_file():
        raise ViewError(f"keyring {keyring} not found")
    if shutil.which("gpgv") is None:
        raise ViewError("gpgv not found")
    signed = workdir / "InRelease.check"
    signed.write_bytes(data)
    try:
        result = spawn.run(["gpgv", "--keyring", keyring, "--ignore-time-conflict", str(signed)],
                           timeout=GPGV_TIMEOUT_SECONDS, errors_apart=True)
    except OSError as err:
        raise ViewError(f"gpgv: {err}") from None
    finally:
        signed.unlink(missing_ok=True)
    if result.timed_out:
        raise ViewError(f"gpgv: no answer within {GPGV_TIMEOUT_SECONDS} s")
    if result.returncode != 0:
        last = result.errors.strip().splitlines()[-1:] or [""]
        raise ViewError(f"InRelease signature not verified: {last[0]}")


def signed_text(inrelease: bytes) -> str:
    """The signed part of an InRelease (dash-escaping undone)."""
    text = inrelease.decode("utf-8", "replace")
    lines = text.split("\n")
    try:
        start = lines.index("-----BEGIN PGP SIGNED MESSAGE-----")
        body = lines.index("", start) + 1
        end = lines.index("-----BEGIN PGP SIGNATURE-----", body)
    except ValueError:
        raise ViewError("InRelease is not a clear-signed message") from None
    return "\n".join(line[2:] if line.startswith("- ") else line for line in lines[body:end])


def split_inline_signature(inrelease: bytes) -> Tuple[bytes, bytes]:
    """(Release, Release.gpg) as debootstrap's split_inline_sig writes them: the signed
    lines without the last newline, the signature block with one per line."""
    lines = inrelease.decode("utf-8", "replace").split("\n")
    state = "pre-begin"
    data: List[str] = []
    signature: List[str] = []
    for line in lines:
        if state == "pre-begin":
            if line == "-----BEGIN PGP SIGNED MESSAGE-----":
                state = "begin"
        elif state == "begin":
            if line == "":
                state = "data"
        elif state == "data":
            if line == "-----BEGIN PGP SIGNATURE-----":
                signature.append(line)
                state = "signature"
            else:
                data.append(line)
        else:
            signature.append(line)
            if line == "-----END PGP SIGNATURE-----":
                break
    release = "\n".join(data).encode()
    return release, "".join(f"{line}\n" for line in signature).encode()


def release_fields(text: str) -> List[str]:
    """The Release's field lines other than its checksum lists (which name files this
    copy does not have), continuation lines kept with their field."""
    kept: List[str] = []
    keep = True
    for line in text.split("\n"):
        if not line.strip():
            continue
        if not line[:1].isspace():
            keep = line.partition(":")[0].strip().lower() not in _CHECKSUM_FIELDS
        if keep:
            kept.append(line)
    return kept


def reachable(index: PackageIndex, names: Iterable[str], excluded: Iterable[str] = ()) -> Set[str]:
    """Every package reachable from ``names`` through Depends and Pre-Depends, every
    alternative and every provider of a virtual name taken: a superset of any choice
    debootstrap's resolver (first alternatives) makes."""
    skip = set(excluded)
    seen: Set[str] = set()
    todo = [n for n in names if n not in skip]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        deb = index.get(name)
        if deb is None:
            todo.extend(p for p in index.providers(name) if p not in seen and p not in skip)
            continue
        seen.add(name)
        for field in (deb.depends, deb.pre_depends):
            for item in field.split(","):
                for alternative in item.split("|"):
                    dep = alternative.split("(", 1)[0].strip().split(":", 1)[0]
                    if dep and dep not in seen and dep not in skip:
                        todo.append(dep)
    return seen


def cut_index(index: PackageIndex, names: Iterable[str]) -> bytes:
    """The stanzas of ``names`` that ``index`` has, in the index's order (debootstrap
    copies them in that order into dpkg's ``available``), as a Packages file."""
    keep = set(names)
    stanzas = [index.stanza(n) for n in index.names() if n in keep]
    return b"".join(s + b"\n\n" for s in stanzas if s is not None)


def write_release(fields: Sequence[str], files: Mapping[str, bytes], dest: Path) -> None:
    lines = list(fields) + ["SHA256:"]
    for path in sorted(files):
        data = files[path]
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path}")
    dest.write_text("\n".join(lines) + "\n")


def prepare(mirror: str, release: str, arch: str, components: Sequence[str], variant: str,
            include: Sequence[str], root: Path, workdir: Path, keyring: str,
            deadline: float = debprefetch.DEADLINE_SECONDS,
            per_request: float = debprefetch.REQUEST_TIMEOUT_SECONDS,
            workers: int = debprefetch.WORKERS) -> View:
    """Write the local suite under ``workdir`` and place the .debs under ``root``.

    Raises ViewError (or PrefetchError) when any step fails: the caller runs plain
    debootstrap then.
    """
    started = time.monotonic()
    mirror = mirror.rstrip("/")
    fetcher = debprefetch.Fetcher(debprefetch.Clock(deadline))
    try:
        inrelease = debprefetch.read_url(f"{mirror}/dists/{release}/InRelease", fetcher,
                                          per_request, debprefetch.RELEASE_MAX_BYTES)
        verify_inrelease(inrelease, keyring, workdir)
        text = signed_text(inrelease)
        sums = debprefetch.parse_release_sha256(text)
        if not sums:
            raise ViewError("InRelease lists no SHA256 checksums")
        full: Dict[str, Path] = {}
        per_component: Dict[str, PackageIndex] = {}
        merged = PackageIndex()
        for component in components:
            data = debprefetch.fetch_index(mirror, release, component, arch, sums, fetcher,
                                           per_request)
            # Kept on disk for restore_lists, not in memory (50 MB for bookworm main).
            full[component] = workdir / f"{component}.Packages"
            full[component].write_bytes(data)
            if len(components) == 1:
                merged = per_component[component] = debprefetch.parse_packages(data)
            else:
                per_component[component] = debprefetch.parse_packages(data)
                merged.add(data)
            del data
        names, excluded = debprefetch.initial_names(merged, release, variant, include,
                                                    mirror.startswith("https://"))
        wanted = debprefetch.resolve(merged, names, excluded)
        # debootstrap starts from every required (and, but for minbase, important)
        # package of the index it reads: the cut index keeps them all.
        start = set(names) | merged.priorities["required"] | merged.priorities["important"]
        keep = reachable(merged, start) | {d.name for d in wanted}
        placed, _, problems = debprefetch.download_all(mirror, wanted, root, fetcher,
                                                       workers, per_request)
        if problems or placed != len(wanted):
            raise ViewError(f"{len(wanted) - placed} .debs not downloaded "
                            f"({problems[0] if problems else 'unknown'})")
    finally:
        fetcher.close()
    suite = workdir / "dists" / release
    files: Dict[str, bytes] = {}
    for component, index in per_component.items():
        path = f"{component}/binary-{arch}/Packages"
        files[path] = cut_index(index, keep)
        (suite / path).parent.mkdir(parents=True, exist_ok=True)
        (suite / path).write_bytes(files[path])
    write_release(release_fields(text), files, suite / "Release")
    view = View(url=workdir.resolve().as_uri(), inrelease=inrelease, indices=full,
                wanted=len(wanted), seconds=time.monotonic() - started)
    LOG.info("local suite for debootstrap: %d of %d packages in its index, %d .debs "
             "downloaded, in %.1f s", len(keep), len(merged), len(wanted), view.seconds)
    return view


def list_name(mirror: str, path: str) -> str:
    """debootstrap's name in /var/lib/apt/lists for ``path`` under ``mirror``."""
    base = mirror.split("://", 1)[-1].rstrip("/")
    return f"{base}/{path}".replace("/", "_")


def restore_lists(view: View, mirror: str, release: str, arch: str, root: Path) -> None:
    """The base's apt lists as plain debootstrap leaves them: the real mirror's
    InRelease (split into Release and Release.gpg) and full Packages; the local
    suite's own are removed."""
    lists = root / LISTS
    local = list_name(view.url, "")
    for stale in lists.glob(local + "*"):
        if stale.is_file():
            stale.unlink()
    lists.mkdir(parents=True, exist_ok=True)
    mirror = mirror.rstrip("/")
    release_text, signature = split_inline_signature(view.inrelease)
    (lists / list_name(mirror, f"dists/{release}/InRelease")).write_bytes(view.inrelease)
    (lists / list_name(mirror, f"dists/{release}/Release")).write_bytes(release_text)
    (lists / list_name(mirror, f"dists/{release}/Release.gpg")).write_bytes(signature)
    for component, path in view.indices.items():
        name = list_name(mirror, f"dists/{release}/{component}/binary-{arch}/Packages")
        shutil.copyfile(path, lists / name)


def mirror_includes(mirror: str, release: str) -> Tuple[str, ...]:
    """What debootstrap adds to the base for an https mirror, which it does not see
    behind the local copy's file:// URL: passed as --include instead (same set)."""
    if not mirror.startswith("https://"):
        return ()
    if release in debprefetch.APT_TRANSPORT_HTTPS or release.startswith("jessie"):
        return ("apt-transport-https", "ca-certificates")
    return ("ca-certificates",)


def describe_failure(err: Exception) -> str:
    if isinstance(err, (ViewError, PrefetchError)):
        return str(err)
    return f"{type(err).__name__}: {err}"
