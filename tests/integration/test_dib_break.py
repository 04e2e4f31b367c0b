"""break=: a shell on the build's terminal (a real pty), inside the image or on the host."""

from __future__ import annotations

import os
import pty
import select
import signal
import tarfile
import time

import pytest

from tests.integration.dibhelpers import REPO, build_mounts, dib_cmd, dib_env, make_element

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    """This module's own cache: its first build is cold whatever ran before or after."""
    return tmp_path_factory.mktemp("break-image-cache")


class Terminal:
    """dib-build on a pseudo-terminal: read what it prints, type into its shell."""

    def __init__(self, args, env):
        command = dib_cmd(*args)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes dib-build
            os.chdir(REPO)
            os.execve(command[0], command, env)
        self.seen = b""

    def expect(self, text: bytes, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            if not self._read(deadline - time.monotonic()):
                self.kill()
                tail = self.seen[-3000:].decode(errors="replace")
                pytest.fail(f"no {text!r} from dib-build:\n{tail}")

    def kill(self) -> None:
        """Stop dib-build the way Ctrl-C would (it releases its mounts), then reap it."""
        os.kill(self.pid, signal.SIGINT)
        self.finish(timeout=120)

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def finish(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def _read(self, timeout: float) -> bool:
        if timeout <= 0 or not select.select([self.fd], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # the child closed the terminal
            return False
        self.seen += chunk
        return bool(chunk)


def test_break_after_install_opens_a_shell_inside_the_image(image_cache, tmp_path):
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", "break": "after-install"})
    out = tmp_path / "out" / "broken-into"
    term = Terminal(["-o", str(out), "-t", "tar", "--image-cache", str(image_cache),
                     "debian-minbase"], env)
    term.expect(b"dib after-install /# ")  # the shell's prompt, inside the image
    term.type("test -e /proc/self/status && echo proc-$((40+2)) > /etc/break-marker; exit")
    assert term.finish() == 0, term.seen[-3000:].decode(errors="replace")
    with tarfile.open(out.with_name("broken-into.tar")) as tar:
        assert tar.extractfile("./etc/break-marker").read() == b"proc-42\n"
    assert not build_mounts()


def test_break_after_error_opens_a_shell_then_fails_as_it_would(image_cache, tmp_path):
    elements = tmp_path / "elements"
    make_element(elements, "fails", {"element-deps": "debian-minbase\n",
                                     "root.d/50-fail": "#!/bin/bash\necho no-good; exit 9\n"})
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", "break": "after-error",
                             "ELEMENTS_PATH": str(elements)})
    marker = tmp_path / "shell-was-here"
    term = Terminal(["-o", str(tmp_path / "x"), "-t", "tar", "--image-cache", str(image_cache),
                     "fails"], env)
    term.expect(b"dib after-error mnt# ")  # on the host, in the image tree
    term.type(f'echo "$TARGET_ROOT" > {marker}; exit')
    assert term.finish() == 1
    assert b"root.d/50-fail failed with exit code 9" in term.seen
    assert marker.read_text().strip().endswith("/mnt")
    assert not build_mounts()


def test_break_without_a_terminal_goes_on_and_a_bad_point_is_refused(image_cache, tmp_path):
    import subprocess

    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", "break": "before-root"})
    args = ["-o", str(tmp_path / "y"), "-t", "tar", "--image-cache", str(image_cache),
            "debian-minbase"]
    done = subprocess.run(dib_cmd(*args), env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "break=before-root: stdin is not a terminal, no shell; going on" in done.stdout
    bad = subprocess.run(dib_cmd(*args), env={**env, "break": "after-instal"}, cwd=REPO,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2
    assert "unknown breakpoint(s) after-instal" in bad.stdout + bad.stderr
