"""Base root filesystems with debootstrap, cached per (release, arch, mirror, variant, packages).

Run by the ``debootstrap`` element's root.d hook as ``"$_DIB_PYTHON" -m dib.bootstrap``
(dib's own interpreter); every input comes from the build environment (DISTRO_NAME,
DIB_RELEASE, ARCH, TARGET_ROOT, DIB_IMAGE_CACHE, DIB_OFFLINE, DIB_DISTRIBUTION_MIRROR, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from dib import cachebudget, chroot, debprefetch, failure, safefile, suiteview, tarball
from dib.errors import CommandFailed, ConfigError, DibError
from dib.mirror import MirrorNotFound, find_mirror
from dib.run import run

LOG = logging.getLogger("dib")
PROBE_ATTEMPTS = 3
PROBE_TIMEOUT_SECONDS = 10.0
DEFAULT_DEBOOTSTRAP_TIMEOUT = 1800
BASE_BUDGET = "DIB_BASE_CACHE_MAX"
DEFAULT_BASE_BUDGET = 2 << 30  # a minbase tar is 170-270 MiB


def debootstrap_scripts_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("DEBOOTSTRAP_DIR", "/usr/share/debootstrap")) / "scripts"


def check_script(release: str, env: Mapping[str, str]) -> None:
    """Fail with debootstrap's own wording when it cannot build ``release`` here."""
    if not shutil.which("debootstrap"):
        raise DibError("debootstrap not available: install the debootstrap package")
    script = debootstrap_scripts_dir(env) / release
    if not script.exists():
        raise DibError(f"No such script: {script}")


APT_KEYRING_VAR = "DIB_APT_KEYRING"
# Where apt in the image finds it: trusted for every source, kept in the image.
IMAGE_KEYRING = Path("etc/apt/trusted.gpg.d/dib-apt-keyring.gpg")
APT_KEYRING_MAX_BYTES = 16 * safefile.MiB  # Debian's own keyring is ~100 KiB
_PUBLIC_KEY_TAG = 6
_SECRET_KEY_TAGS = (5, 7)  # secret key, secret subkey: never into an image


@dataclass(frozen=True)
class AptKeyring:
    """DIB_APT_KEYRING, checked: the keyring the target's archive is signed with."""

    path: Path
    data: bytes


def openpgp_packet_tags(data: bytes) -> List[int]:
    """The packet tags of a binary OpenPGP keyring (RFC 4880 section 4.2, both header
    formats); ValueError when ``data`` is not a whole sequence of packets."""
    tags: List[int] = []
    at = 0
    while at < len(data):
        header = data[at]
        if not header & 0x80:
            raise ValueError(f"no OpenPGP packet at byte {at}")
        if header & 0x40:  # new format: tag in 6 bits, then a 1, 2 or 5 byte length
            tag, (length, used) = header & 0x3F, _new_length(data, at + 1)
        else:  # old format: tag in 4 bits, the length's size in the last 2
            tag, (length, used) = (header >> 2) & 0x0F, _old_length(data, at + 1, header & 3)
        at += 1 + used + length
        if at > len(data):
            raise ValueError("truncated OpenPGP packet")
        tags.append(tag)
    return tags


def _new_length(data: bytes, at: int) -> Tuple[int, int]:
    first = data[at] if at < len(data) else -1
    if 0 <= first < 192:
        return first, 1
    if 192 <= first < 224 and at + 1 < len(data):
        return ((first - 192) << 8) + data[at + 1] + 192, 2
    if first == 255 and at + 4 < len(data):
        return int.from_bytes(data[at + 1:at + 5], "big"), 5
    raise ValueError("bad OpenPGP packet length")  # partial lengths never occur in keys


def _old_length(data: bytes, at: int, length_type: int) -> Tuple[int, int]:
    size = {0: 1, 1: 2, 2: 4}.get(length_type)
    if size is None or at + size > len(data):
        raise ValueError("bad OpenPGP packet length")
    return int.from_bytes(data[at:at + size], "big"), size


def keyring_problem(data: bytes) -> Optional[str]:
    """Why ``data`` is not a binary public keyring that both debootstrap's gpgv and apt's
    trusted.gpg.d read, or None."""
    if not data:
        return "is empty"
    if data.lstrip().startswith(b"-----BEGIN PGP"):
        return "is ASCII-armored: give the binary keyring (gpg --dearmor FILE)"
    if data[8:12] == b"KBXf":
        return "is a GnuPG keybox, which apt does not read: export it (gpg --export KEYID)"
    try:
        tags = openpgp_packet_tags(data)
    except ValueError as err:
        return f"is not an OpenPGP keyring ({err}): write one with gpg --export KEYID"
    if any(tag in _SECRET_KEY_TAGS for tag in tags):
        return "holds a secret key: give the public keyring only (gpg --export KEYID)"
    if _PUBLIC_KEY_TAG not in tags:
        return "holds no public key: write one with gpg --export KEYID"
    return None


def apt_keyring(env: Mapping[str, str]) -> Optional[AptKeyring]:
    """DIB_APT_KEYRING read and checked (None when unset); a ConfigError naming the
    variable and the path when it cannot serve, so the build stops before debootstrap."""
    value = env.get(APT_KEYRING_VAR, "")
    if not value:
        return None

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{APT_KEYRING_VAR}={value!r} {why}")

    path = Path(value)
    if not path.is_absolute():
        raise refuse("is not an absolute path")
    try:
        data = safefile.read_regular(path, APT_KEYRING_MAX_BYTES)
    except FileNotFoundError:
        raise refuse("does not exist") from None
    except OSError as err:
        raise refuse(f"cannot be read: {err.strerror or err}") from None
    problem = keyring_problem(data)
    if problem:
        raise refuse(problem)
    return AptKeyring(path, data)


def keyring_options(keyring: Optional[AptKeyring]) -> Tuple[str, ...]:
    """debootstrap's option to check the archive against ``keyring`` (none: the script's)."""
    return (f"--keyring={keyring.path}",) if keyring else ()


def install_apt_keyring(keyring: AptKeyring, root: Path) -> None:
    """Make apt in ``root`` trust ``keyring`` (world-readable: apt reads it as _apt);
    written beside and renamed, so a symlink already at the name is replaced, never followed."""
    dest = root / IMAGE_KEYRING
    partial = dest.with_name(f".{dest.name}.{os.getpid()}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(keyring.data)
            os.fchmod(out.fileno(), 0o644)  # whatever the umask
        os.replace(partial, dest)
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise DibError(f"{APT_KEYRING_VAR}: cannot install it as /{IMAGE_KEYRING} in the "
                       f"image: {err.strerror or err}") from None
    LOG.info("apt in the image trusts %s (%s)", keyring.path, IMAGE_KEYRING)


@dataclass(frozen=True)
class BaseSpec:
    """Everything that makes one debootstrap result different from another."""

    distro: str
    release: str
    arch: str
    mirror: str
    variant: str
    components: Tuple[str, ...]
    include: Tuple[str, ...]
    # The repository state the orchestrator pinned (DIB_REPOSITORY_STATE: a snapshot's
    # content): a base cached from another state is not this one. Empty: the mirror's
    # current state, keyed as before.
    repository: str = ""

    @property
    def key(self) -> str:
        fields = asdict(self)
        if not self.repository:
            del fields["repository"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_file(self, cache_dir: Path) -> Path:
        return (
            cache_dir / "debootstrap" / f"{self.distro}-{self.release}-{self.arch}-{self.key}.tar"
        )


def spec_from_env(env: Mapping[str, str]) -> BaseSpec:
    distro = env.get("DISTRO_NAME", "debian")
    release = env.get("DIB_RELEASE", "")
    if not release:
        raise DibError("DIB_RELEASE is not set")
    try:
        mirror = find_mirror(distro, env)
    except MirrorNotFound as err:
        raise DibError(str(err)) from None

    def words(name: str, default: str) -> Tuple[str, ...]:
        return tuple(w for w in env.get(name, default).replace(",", " ").split() if w)

    return BaseSpec(
        distro=distro,
        release=release,
        arch=env.get("ARCH", "amd64"),
        mirror=mirror,
        variant=env.get("DIB_DEBOOTSTRAP_VARIANT", "minbase"),
        components=words("DIB_DEBIAN_COMPONENTS", "main"),
        include=tuple(sorted(words("DIB_DEBOOTSTRAP_INCLUDE", ""))),
        repository=env.get("DIB_REPOSITORY_STATE", "").strip(),
    )


Opener = Callable[[str, float], None]


def _open_url(url: str, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http mirror)
        response.read(1)


def probe_mirror(spec: BaseSpec, opener: Opener = _open_url, sleep=time.sleep) -> None:
    """Check that the mirror answers and carries the suite, in bounded time."""
    url = f"{spec.mirror}/dists/{spec.release}/Release"
    if url.startswith("file:"):
        if not Path(urllib.parse.urlparse(url).path).exists():
            raise DibError(
                f"mirror {spec.mirror} does not carry suite '{spec.release}' ({url} missing)"
            )
        return
    last = ""
    for attempt in range(1, PROBE_ATTEMPTS + 1):
        try:
            opener(url, PROBE_TIMEOUT_SECONDS)
            return
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise DibError(
                    f"mirror {spec.mirror} does not carry suite '{spec.release}' "
                    f"(dists/{spec.release}/Release: HTTP 404)"
                ) from None
            last = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            last = str(getattr(err, "reason", err))
        if attempt < PROBE_ATTEMPTS:
            sleep(attempt)
    raise DibError(f"mirror {spec.mirror} unreachable: {last} (after {PROBE_ATTEMPTS} attempts)")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise builders that want the same cache entry (concurrent cells share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def extract(cache_file: Path, root: Path) -> None:
    tarball.unpack(cache_file, root, tag="debootstrap-cache")
    cachebudget.touch(cache_file)


def store(root: Path, cache_file: Path) -> None:
    tarball.pack(root, cache_file, tag="debootstrap-cache")


def base_budget(env: Mapping[str, str]) -> int:
    text = env.get(BASE_BUDGET, "")
    if not text:
        return DEFAULT_BASE_BUDGET
    size = cachebudget.parse_size(text)
    if size is None:
        raise ConfigError(f"{BASE_BUDGET}={text!r}: not a size (e.g. 2G, 500M)")
    return size


def remove_unused_base(cache_file: Path) -> bool:
    """Remove a cached base unless a build holds its lock (it is being read or written)."""
    try:
        lock = open(cache_file.with_suffix(".lock"), "a")  # noqa: SIM115 (closed below)
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        # A build that opened the lock before this unlink finds no base and makes it
        # again; one that opens it after gets a new lock file: both are correct.
        for path in (cache_file, cache_file.with_suffix(".lock")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return True


def prune_bases(cache_file: Path, budget: int) -> None:
    """Keep the cached bases within ``budget``, this build's own always kept."""
    cachebudget.prune(cache_file.parent, budget, cache_file.stem, remove_unused_base)
    for lock in cache_file.parent.glob("*.lock"):  # of builds that never stored a base
        if not lock.with_suffix(".tar").exists():
            remove_unused_base(lock.with_suffix(".tar"))


DEBOOTSTRAP_LOG_BYTES = 16 << 10  # of the end of debootstrap.log, read after a failure
DEBOOTSTRAP_LOG_LINES = 20


def debootstrap_log_tail(root: Path) -> List[str]:
    """The last lines of ``root``'s debootstrap/debootstrap.log (bounded), or []."""
    path = root / "debootstrap" / "debootstrap.log"
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - DEBOOTSTRAP_LOG_BYTES))
            data = log.read(DEBOOTSTRAP_LOG_BYTES)
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return with_wget_urls([line for line in lines if line.strip()])[-DEBOOTSTRAP_LOG_LINES:]


_WGET_URL = re.compile(r"(?:https?|ftp)://\S+:")  # wget's "URL:" line before its error


def with_wget_urls(lines: List[str]) -> List[str]:
    """wget writes a failed download as "URL:" then "<date> ERROR 404: <reason>." on the
    next line: one line "URL: <date> ERROR ..." keeps which file it was with the error
    (the package a replayed snapshot lacks, the index a mirror lost)."""
    joined: List[str] = []
    for line in lines:
        if joined and _WGET_URL.fullmatch(joined[-1].strip()) and " ERROR " in f" {line}":
            joined[-1] = f"{joined[-1].strip()} {line.strip()}"
        else:
            joined.append(line)
    return joined


# dpkg inside debootstrap's second stage reads the target's dpkg.cfg.d: without an
# fsync per unpacked file it installs the base markedly faster (a build that dies
# is thrown away anyway). Removed before the base is cached or used.
UNSAFE_IO = Path("etc/dpkg/dpkg.cfg.d/95dib-debootstrap-unsafe-io")


def debootstrap(spec: BaseSpec, root: Path, timeout: float, mirror: str = "",
                options: Tuple[str, ...] = ()) -> None:
    """debootstrap ``spec`` into ``root``, from ``mirror`` (default: the spec's)."""
    unsafe_io = root / UNSAFE_IO
    unsafe_io.parent.mkdir(parents=True, exist_ok=True)
    unsafe_io.write_text("force-unsafe-io\n")
    try:
        _debootstrap(spec, root, timeout, mirror or spec.mirror, options)
    finally:
        unsafe_io.unlink(missing_ok=True)


def debootstrap_command(spec: BaseSpec, root: Path, mirror: str,
                        options: Tuple[str, ...] = ()) -> List[str]:
    cmd = [
        "debootstrap",
        f"--variant={spec.variant}",
        f"--arch={spec.arch}",
        f"--components={','.join(spec.components)}",
        *options,
    ]
    if spec.include:
        cmd.append(f"--include={','.join(spec.include)}")
    return cmd + [spec.release, str(root), mirror]


def _debootstrap(spec: BaseSpec, root: Path, timeout: float, mirror: str,
                 options: Tuple[str, ...]) -> None:
    cmd = debootstrap_command(spec, root, mirror, options)
    try:
        run(cmd, tag="debootstrap", timeout=timeout)
    except CommandFailed as err:
        reason = next((line for line in reversed(err.tail) if line.startswith("E:")), "")
        what = "timed out" if err.timed_out else f"failed (exit {err.returncode})"
        problem = DibError(
            f"debootstrap of {spec.release} from {spec.mirror} {what}"
            + (f": {reason}" if reason else "")
        )
        # debootstrap's own output only summarises ("Couldn't download", "Tried to
        # extract package"); the cause (tar's or unxz's "No space left on device",
        # wget's refused connection) is in the target's debootstrap.log.
        details = debootstrap_log_tail(root)
        for line in details:
            LOG.info("debootstrap.log | %s", line)
        own = failure.pick_error_line(details, last_resort=False)
        own = own or failure.pick_error_line(err.tail)
        raise failure.note(
            problem, status=err.returncode, error=own, command=" ".join(cmd)
        ) from None
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def empty_dir(root: Path) -> None:
    """Remove everything in ``root`` (after unmounting what a failed debootstrap left)."""
    if not root.is_dir():
        return
    base = Path(os.path.realpath(root))
    for point in chroot.mounts_under(root):
        if point != base:  # root itself may be a mount (a tmpfs): only what is below it
            chroot.unmount(point)
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def debootstrap_from_local_suite(env: Mapping[str, str], spec: BaseSpec, root: Path,
                                 timeout: float, keyring: Optional[AptKeyring] = None) -> bool:
    """debootstrap from a local cut-down copy of the suite (:mod:`dib.suiteview`).

    False when there is no such copy or debootstrap failed with it: ``root`` is then
    empty again and the caller runs plain debootstrap, whose outcome (and error
    message) is the one that counts.
    """
    if not suiteview.enabled(env, spec.mirror):
        return False
    checked_with = suiteview.keyring_for(debootstrap_scripts_dir(env) / spec.release,
                                         keyring.path if keyring else None)
    workdir = Path(tempfile.mkdtemp(prefix="dib-suite-", dir=env.get("TMPDIR") or None))
    try:
        try:
            view = suiteview.prepare(spec.mirror, spec.release, spec.arch, spec.components,
                                     spec.variant, spec.include, root, workdir,
                                     checked_with)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 (plain debootstrap instead)
            LOG.info("no local suite for debootstrap (%s): plain debootstrap",
                     suiteview.describe_failure(err))
            empty_dir(root)
            return False
        # debootstrap adds ca-certificates for an https mirror; it sees file:// here.
        extra = tuple(p for p in suiteview.mirror_includes(spec.mirror, spec.release)
                      if p not in spec.include)
        local = dataclasses.replace(spec, include=spec.include + extra) if extra else spec
        try:
            debootstrap(local, root, timeout, view.url, ("--no-check-gpg",))
        except DibError as err:
            LOG.info("debootstrap from the local suite failed (%s): again from %s",
                     err, spec.mirror)
            empty_dir(root)
            return False
        suiteview.restore_lists(view, spec.mirror, spec.release, spec.arch, root)
        return True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_sources(spec: BaseSpec, root: Path) -> None:
    line = f"deb {spec.mirror} {spec.release} {' '.join(spec.components)}\n"
    (root / "etc/apt").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list").write_text(line)


NEUTRAL_HOSTNAME = "localhost\n"  # as Debian's cloud images ship it: named at first boot


def forget_build_host(root: Path) -> None:
    """debootstrap copies the build machine's /etc/hostname into the image (a container
    on the host network has the machine's name): the image gets a neutral one instead,
    which cloud-init, DHCP or the user replace at first boot. The file is replaced, never
    written through (a symlink at its name is not followed)."""
    path = root / "etc/hostname"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".hostname.{os.getpid()}")
    partial.write_text(NEUTRAL_HOSTNAME)
    partial.chmod(0o644)
    os.replace(partial, path)


def prepare_root(env: Mapping[str, str]) -> Path:
    """Fill TARGET_ROOT with the base system, from the cache when possible."""
    release = env.get("DIB_RELEASE", "")
    check_script(release, env)  # before anything else, cache or not
    keyring = apt_keyring(env)
    spec = spec_from_env(env)
    root = Path(env["TARGET_ROOT"])
    cache_file = spec.cache_file(Path(env.get("DIB_IMAGE_CACHE", "/tmp/dib-cache")))
    budget = base_budget(env)
    offline = env.get("DIB_OFFLINE", "") not in ("", "0")
    with locked(cache_file):
        if cache_file.exists():
            LOG.info("using cached base %s", cache_file)
            extract(cache_file, root)
        elif offline:
            raise DibError(
                f"--offline: no cached base for {spec.distro} {spec.release} "
                f"({cache_file} missing); run once online first"
            )
        else:
            probe_mirror(spec)
            timeout = float(env.get("DIB_DEBOOTSTRAP_TIMEOUT", DEFAULT_DEBOOTSTRAP_TIMEOUT))
            if not debootstrap_from_local_suite(env, spec, root, timeout, keyring):
                # The .debs in parallel while debootstrap reads its index (best effort).
                with debprefetch.alongside(env, spec.mirror, spec.release, spec.arch,
                                           spec.components, spec.variant, spec.include,
                                           root):
                    debootstrap(spec, root, timeout, "", keyring_options(keyring))
            write_sources(spec, root)
            forget_build_host(root)
            store(root, cache_file)
            LOG.info("cached base as %s", cache_file)
            prune_bases(cache_file, budget)
    write_sources(spec, root)
    forget_build_host(root)  # also in a base cached before it was done
    if keyring:  # after the base is cached: a build without the setting never trusts it
        install_apt_keyring(keyring, root)
    return cache_file


def main(env: Optional[Mapping[str, str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    env = os.environ if env is None else env
    try:
        prepare_root(env)
    except DibError as err:
        print(err, file=sys.stdout, flush=True)
        # For dib's failure record: debootstrap's own line (or this check's), not the hook's.
        failure.write_hook_detail(env, failure_detail(err))
        return 1
    return 0


def failure_detail(err: DibError) -> Dict[str, object]:
    """This hook's part of dib's failure record: a debootstrap failure, or a setting
    (DIB_APT_KEYRING) that is wrong whatever the mirror holds."""
    kind = "config" if isinstance(err, ConfigError) else "debootstrap"
    return {**failure.describe(err), "kind": kind}


if __name__ == "__main__":
    sys.exit(main())
