"""Throw-away OpenPGP keys for tests: sign a Release as an archive does, trust it with a
keyring file as apt and debootstrap do.

``signing_key(directory)`` makes an ed25519 key in its own GNUPGHOME (under /tmp: the
agent's socket path must stay short) and exports it as a binary keyring, the form
``gpgv --keyring`` and ``/usr/share/keyrings/*.gpg`` take. Use it as a context
manager so the gpg-agent it started is ended::

    with signing_key(tmp_path, "Test Archive") as key:
        inrelease = key.clearsign(release)
        release.verify(inrelease, key.keyring)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

GPG_TIMEOUT = 60.0


@dataclass(frozen=True)
class SigningKey:
    home: Path  # its GNUPGHOME
    uid: str
    keyring: Path  # the public key exported as a binary keyring

    def gpg(self, *args: str, data: bytes = b"") -> bytes:
        """``gpg --batch ARGS`` in this key's home, ``data`` on stdin; its stdout."""
        done = subprocess.run(
            ["gpg", "--batch", "--quiet", "--homedir", str(self.home), "--pinentry-mode",
             "loopback", "--passphrase", "", *args],
            input=data, capture_output=True, timeout=GPG_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)}: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def clearsign(self, text: bytes) -> bytes:
        """An InRelease made from the Release ``text``."""
        return self.gpg("--digest-algo", "SHA256", "--local-user", self.uid, "--clearsign",
                        data=text)

    def detach_sign(self, text: bytes) -> bytes:
        """A Release.gpg for ``text`` (armoured, as Debian publishes it)."""
        return self.gpg("--digest-algo", "SHA256", "--local-user", self.uid, "--armor",
                        "--detach-sign", data=text)


@contextmanager
def signing_key(directory: Path, uid: str = "Test Archive <archive@example.invalid>",
                ) -> Iterator[SigningKey]:
    """A new signing key; its keyring is written to ``directory``. Ends its agent after."""
    home = Path(tempfile.mkdtemp(prefix="gpg.", dir="/tmp"))
    home.chmod(0o700)
    keyring = Path(directory) / f"{uid.split('<')[0].strip().replace(' ', '-').lower()}.gpg"
    key = SigningKey(home, uid, keyring)
    try:
        key.gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
        keyring.write_bytes(key.gpg("--export", uid))
        yield key
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, timeout=GPG_TIMEOUT, check=False)
        shutil.rmtree(home, ignore_errors=True)
