"""The registry a multi-node swarm run starts to push its dib layers to.

On a multi-node swarm every node must get each host's dib layer, a local image built
on the manager. No public registry is reachable, so the run pushes each layer to a
registry and its cells name the pushed image by digest (``<host>/<repo>@sha256:...``):
the swarm then runs exactly the bytes pushed, whatever happens to a tag later.

The registry is the one the user names (``--registry HOST[:PORT][/PREFIX]``,
``matrix.config.registryname``) or, without one, a ``RunRegistry``: Debian's ``docker-registry``
started by the run on the manager's swarm address, over TLS. Its certificate comes
from a CA local to this machine (made once, kept in ``ca_dir``); the manager's own
engine trusts it through ``/etc/docker/certs.d/<addr>:<port>/ca.crt``, which dockerd
reads at every push and pull, so no daemon restart is needed. The other nodes trust
that CA the same way, or list the manager in their ``insecure-registries``
(``"<manager ip>/32"``): an insecure registry is tried over HTTPS without
verification first, so a TLS registry serves them too. Pushing is
``matrix.containers.registrypush``'s.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any

import yaml

from dib import spawn
from matrix.config.registryname import RegistryError, RegistryName
from results.trees import inodes, remove_tree

EXECUTABLE = "docker-registry"  # Debian's package of that name (distribution 2.8)
OPENSSL = "openssl"
CERTS_D = Path("/etc/docker/certs.d")
START_TIMEOUT = 20.0
STOP_GRACE = 10.0
PORT_ATTEMPTS = 5
PORT_TAKEN = "address already in use"  # what docker-registry logs when it cannot listen
OPENSSL_TIMEOUT = 60.0
CA_DAYS = 3650  # the CA other nodes are told to trust: renewed only when it runs out
# A leaf lives for one run (hours); a week leaves room for the longest matrix.
LEAF_DAYS = 7
DEFAULT_REGISTRY_DIR = Path.home() / ".cache" / "dib-matrix" / "registry"
LOG_TAIL_LINES = 12
# The storage keeps every layer pushed by any run; past this it is emptied when no run
# uses it (the layers all live on the manager: the next push is a copy, not a build).
STORAGE_BUDGET = 4 << 30
LOG = logging.getLogger("dib-matrix")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LeafCertificate:
    """The registry's own key and certificate, and the CA that signed them."""

    key: Path
    cert: Path
    ca: Path  # the CA's certificate, what clients verify with


class RunRegistry:
    """A docker-registry this run started; ``stop`` (or the ``with`` block) ends it."""

    def __init__(self, address: str, port: int, process: subprocess.Popen[bytes],
                 ca_certificate: Path, undo: ExitStack) -> None:
        self.address = address
        self.port = port
        self.process = process
        self.ca_certificate = ca_certificate  # what other nodes must trust
        self._undo = undo

    @classmethod
    def start(cls, address: str, storage: Path, work: Path, ca_dir: Path,
              certs_d: Path = CERTS_D, *, executable: str = EXECUTABLE,
              timeout: float = START_TIMEOUT) -> RunRegistry:
        """Serve on a free port of ``address`` until ``stop``; RegistryError if it cannot.

        Call from the thread that outlives the registry (the main one): the child gets
        SIGTERM when the thread that started it ends, so a killed run leaves none behind.
        """
        ip = listen_address(address)
        program = _find_program(executable, "install Debian's docker-registry package "
                                "(bindep.txt lists it)")
        _make_dir(work, "work directory")
        _make_dir(storage, "storage")  # shared by runs: content-addressed
        with ExitStack() as undo:
            undo.enter_context(_storage_lease(storage, STORAGE_BUDGET))
            undo.callback(_remove_files, work / "registry.key", work / "registry.crt")
            certificate = issue_certificate(ip, ca_dir, work)
            port, process = _launch(program, ip, storage, work, certificate, timeout)
            undo.callback(spawn.stop, process, STOP_GRACE)
            host_dir = certs_d / host_port(ip, port)
            undo.callback(_untrust, host_dir)
            _trust(host_dir, certificate.ca)
            return cls(str(ip), port, process, certificate.ca, undo.pop_all())

    @property
    def host(self) -> str:
        """``addr:port`` (``[v6]:port``), as image references name it."""
        return host_port(ipaddress.ip_address(self.address), self.port)

    @property
    def name(self) -> RegistryName:
        return RegistryName(self.host)

    def stop(self) -> None:
        """The process stopped, the certs.d entry and the leaf key removed; idempotent."""
        self._undo.close()

    def __enter__(self) -> RunRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def listen_address(address: str) -> IPAddress:
    """``address`` as the registry can listen on it and other nodes reach it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise RegistryError(f"{address!r} is not an IP address: the run's registry listens "
                            "on the manager's swarm address (docker info: "
                            "Swarm.NodeAddr)") from None
    if ip.is_unspecified or ip.is_multicast or getattr(ip, "scope_id", None):
        raise RegistryError(f"{address}: the registry needs one unicast address the other "
                            "nodes reach (the manager's swarm address), without a %zone")
    _free_port(ip)  # an address of another machine fails here, before a CA is made
    return ip


def host_port(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _free_port(ip: IPAddress) -> int:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError as err:
            raise RegistryError(f"cannot listen on {ip} ({err.strerror}): give an address "
                                "of this machine, the manager's swarm address") from None
        return int(probe.getsockname()[1])


def _make_dir(path: Path, what: str, mode: int = 0o777) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as err:
        raise RegistryError(f"cannot make the registry's {what} {path}: {err.strerror}"
                            ) from None


def _find_program(name: str, hint: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise RegistryError(f"{name} not found: {hint}")
    return found


# ---------------------------------------------------------------- certificates


def issue_certificate(ip: IPAddress, ca_dir: Path, work: Path) -> LeafCertificate:
    """A fresh leaf key and certificate in ``work`` for ``ip`` (and 127.0.0.1), signed
    by the CA in ``ca_dir``, which is made the first time and kept for later runs."""
    _make_dir(ca_dir, "CA directory", mode=0o700)
    leaf = LeafCertificate(work / "registry.key", work / "registry.crt", ca_dir / "ca.crt")
    config = work / "openssl.cnf"
    config.write_text(render_openssl_config(f"dib-matrix run registry {ip}", ip))
    with _locked(ca_dir / "ca.lock"):  # runs starting together make one CA, not two
        ca_key = _ensure_ca(ca_dir)
        _openssl("req", "-x509", *_NEW_KEY, "-keyout", leaf.key, "-out", leaf.cert,
                 "-days", LEAF_DAYS, "-config", config, "-extensions", "leaf",
                 "-CA", leaf.ca, "-CAkey", ca_key)
    leaf.key.chmod(0o600)
    try:
        _openssl("verify", "-CAfile", leaf.ca, leaf.cert)
    except RegistryError as err:
        raise RegistryError(f"{ca_dir} holds a CA that cannot sign ({err}): remove "
                            f"{ca_dir} to make a new one, and give the other nodes its "
                            "ca.crt") from None
    return leaf


_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc")


def render_openssl_config(common_name: str, ip: IPAddress | None = None) -> str:
    """openssl req's configuration: our own, so the system's openssl.cnf (whose v3_ca
    it would otherwise add) has no say. Sections ``ca``, and ``leaf`` for ``ip``."""
    lines = ["[req]", "distinguished_name = dn", "prompt = no", "[dn]",
             f"CN = {common_name}",
             "[ca]", "basicConstraints = critical,CA:TRUE,pathlen:0",
             "keyUsage = critical,keyCertSign,cRLSign", "subjectKeyIdentifier = hash"]
    if ip is not None:
        names = dict.fromkeys([f"IP:{ip}", "IP:127.0.0.1"])  # the node's own engine, too
        lines += ["[leaf]", "basicConstraints = critical,CA:FALSE",
                  "keyUsage = critical,digitalSignature", "extendedKeyUsage = serverAuth",
                  f"subjectAltName = {','.join(names)}", "subjectKeyIdentifier = hash",
                  "authorityKeyIdentifier = keyid"]
    return "\n".join(lines) + "\n"


def _ensure_ca(ca_dir: Path) -> Path:
    """The CA's key; a new CA when ``ca_dir`` has none usable for a leaf's lifetime."""
    key, cert = ca_dir / "ca.key", ca_dir / "ca.crt"
    if not _usable_ca(key, cert):
        _make_ca(ca_dir)
    key.chmod(0o600)
    return key


def _usable_ca(key: Path, cert: Path) -> bool:
    """Both files there, the certificate valid for a leaf's lifetime, and of that key
    (a run killed between the two renames of ``_make_ca`` leaves a pair that is not)."""
    if not (key.is_file() and cert.is_file()):
        return False
    try:
        _openssl("x509", "-in", cert, "-noout", "-checkend", LEAF_DAYS * 86400)
        return _openssl("x509", "-in", cert, "-noout", "-pubkey") == \
            _openssl("pkey", "-in", key, "-pubout")
    except RegistryError:
        return False


def _make_ca(ca_dir: Path) -> None:
    """Made aside and renamed in: no half-written file is ever read."""
    staging = Path(tempfile.mkdtemp(prefix=".new-ca-", dir=ca_dir))
    try:
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40]
        config = staging / "openssl.cnf"
        config.write_text(render_openssl_config(f"dib-matrix run registry CA on {host}"))
        _openssl("req", "-x509", *_NEW_KEY, "-keyout", staging / "ca.key",
                 "-out", staging / "ca.crt", "-days", CA_DAYS, "-config", config,
                 "-extensions", "ca")
        (staging / "ca.key").chmod(0o600)
        os.replace(staging / "ca.key", ca_dir / "ca.key")
        os.replace(staging / "ca.crt", ca_dir / "ca.crt")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _openssl(*args: object) -> str:
    """What ``openssl args...`` printed; RegistryError when it failed."""
    argv = [OPENSSL, *(str(arg) for arg in args)]
    try:
        result = spawn.run(argv, timeout=OPENSSL_TIMEOUT)
    except OSError as err:
        raise RegistryError(f"cannot run openssl ({err.strerror}): install the openssl "
                            "package") from None
    if not result.ok:
        said = " / ".join(result.tail(3)) or f"exit status {result.returncode}"
        raise RegistryError(f"openssl {args[0]} failed: {said}")
    return result.text


@contextmanager
def _storage_lease(storage: Path, budget: int) -> Iterator[IO[str]]:
    """A shared hold on ``storage`` for the registry's life. Taken alone (no other run's
    registry holds it), a storage over ``budget`` is emptied first."""
    with _storage_lock(storage) as (handle, alone):
        if alone:
            used = _empty_over(storage, budget)
            if used is not None:
                LOG.info("registry storage %s held %d MiB (over %d MiB): emptied",
                         storage, used >> 20, budget >> 20)
                _make_dir(storage, "storage")
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield handle


def empty_storage(storage: Path) -> str:
    """``clean --caches``: the shared storage removed unless a run's registry serves from
    it; a line for the user (empty when there was none)."""
    if not storage.is_dir():
        return ""
    with _storage_lock(storage) as (_, alone):
        if not alone:
            return (f"kept the run registry's storage {storage}: a live run's registry "
                    "serves from it")
        used = _empty_over(storage, -1)
    return f"removed the run registry's storage {storage} ({(used or 0) >> 20} MiB)"


@contextmanager
def _storage_lock(storage: Path) -> Iterator[tuple[IO[str], bool]]:
    """The storage's lock file, held exclusively when no registry holds it (``alone``)."""
    with storage.with_name(f"{storage.name}.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield handle, False  # a run's registry serves from it
        else:
            yield handle, True


def _empty_over(storage: Path, budget: int) -> int | None:
    """Remove ``storage`` (its lock held alone) if its files hold more than ``budget``
    bytes; the bytes they held, or None when it was kept."""
    used = sum(info.st_size for info in inodes(storage) if stat.S_ISREG(info.st_mode))
    if used <= budget:
        return None
    with suppress(OSError):  # what could not go stays; the registry still starts
        remove_tree(storage)
    return used


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remove_files(*paths: Path) -> None:
    for path in paths:
        with suppress(FileNotFoundError, NotADirectoryError):  # not there: nothing to undo
            path.unlink()


def _trust(host_dir: Path, ca: Path) -> None:
    """Tell the local engine to trust the CA for this registry (read at each push)."""
    staged = host_dir / ".ca.crt.new"
    try:
        host_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, staged)
        staged.chmod(0o644)
        os.replace(staged, host_dir / "ca.crt")
    except OSError as err:
        raise RegistryError(f"cannot write {host_dir / 'ca.crt'} ({err.strerror}): the "
                            "engine trusts the run's registry only through it (run as "
                            "root), or name a registry with --registry") from None


def _untrust(host_dir: Path) -> None:
    _remove_files(host_dir / ".ca.crt.new", host_dir / "ca.crt")
    with suppress(OSError):  # not empty: a user's own files stay
        host_dir.rmdir()


# ---------------------------------------------------------------- the process


def render_config(listen: str, storage: Path, certificate: LeafCertificate) -> dict[str, Any]:
    """docker-registry's configuration for one start."""
    return {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(storage)},
                    "cache": {"blobdescriptor": "inmemory"}},
        "http": {
            "addr": listen,
            # Signs upload state; one client talks to one instance, any value does.
            "secret": secrets.token_hex(16),
            "tls": {"certificate": str(certificate.cert), "key": str(certificate.key),
                    "minimumtls": "tls1.2"},
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }


def _launch(program: str, ip: IPAddress, storage: Path, work: Path,
            certificate: LeafCertificate, timeout: float) -> tuple[int, subprocess.Popen[bytes]]:
    """Start it on a free port of ``ip`` (another one if that was taken meanwhile)."""
    log = work / "registry.log"
    reason, said = "", []
    for _ in range(PORT_ATTEMPTS):
        port = _free_port(ip)
        config = work / "config.yml"
        config.touch(mode=0o600)  # holds the upload secret
        config.write_text(yaml.safe_dump(render_config(host_port(ip, port), storage,
                                                       certificate), sort_keys=False))
        offset = log.stat().st_size if log.exists() else 0
        process = _spawn(program, config, log)
        try:
            reason = _wait_ready(process, f"https://{host_port(ip, port)}/v2/",
                                 certificate.ca, timeout)
        except BaseException:  # Ctrl-C while waiting: leave nothing running
            spawn.stop(process, STOP_GRACE)
            raise
        if not reason:
            return port, process
        spawn.stop(process, STOP_GRACE)
        said = _log_tail(log, offset)
        if not any(PORT_TAKEN in line for line in said):
            break
    raise RegistryError(f"docker-registry did not start on {ip}: {reason}; its last "
                        f"lines (log {log}):\n" + "\n".join(said))


def _spawn(program: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [program, "serve", str(config)]
    setpriv = shutil.which("setpriv", path=os.pathsep.join(["/usr/bin", "/bin"]))
    if setpriv:  # util-linux: the child gets SIGTERM when its parent thread ends
        argv = [setpriv, "--pdeathsig", "TERM", *argv]
    # dib.spawn's curated environment: no REGISTRY_* variable of ours changes its config.
    with log.open("ab") as output:
        return spawn.spawn(argv, stdout=output)


def _wait_ready(process: subprocess.Popen[bytes], url: str, ca: Path, timeout: float) -> str:
    """'' once ``url`` answers over TLS verified with ``ca``; else why not."""
    context = ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),  # never a proxy
                                         urllib.request.HTTPSHandler(context=context))
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited with status {process.returncode}"
        problem = _probe(opener, url)
        if not problem:
            return ""
        time.sleep(0.1)
    return f"{url} did not answer within {timeout:.0f} s ({problem})"


def _probe(opener: urllib.request.OpenerDirector, url: str) -> str:
    try:
        with opener.open(url, timeout=2) as reply:
            return "" if reply.status == 200 else f"status {reply.status}"
    except urllib.error.HTTPError as err:
        return f"status {err.code}"
    except (urllib.error.URLError, OSError, HTTPException) as err:
        return str(getattr(err, "reason", err))


def _log_tail(log: Path, offset: int) -> list[str]:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-LOG_TAIL_LINES:]
