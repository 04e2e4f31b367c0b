"""A hostgen cell's reproducer: the command that builds that host image again by hand."""

import shlex
from types import SimpleNamespace

from matrix.config.hosts import BUNDLED_HOSTS_DIR
from matrix.run.cells import hostgen_reproducer


def cell(name, source):
    return SimpleNamespace(host=SimpleNamespace(name=name, source=source))


def test_a_bundled_host_needs_no_directory():
    command = hostgen_reproducer(cell("debian-trixie", BUNDLED_HOSTS_DIR / "debian-trixie.yaml"))
    assert command == "dib-matrix hosts build --rebuild debian-trixie"


def test_a_users_host_file_brings_its_directory(tmp_path):
    hosts = tmp_path / "my hosts"
    command = hostgen_reproducer(cell("mine", hosts / "mine.yaml"))
    assert shlex.split(command) == ["dib-matrix", "hosts", "--hosts-dir", str(hosts),
                                    "build", "--rebuild", "mine"]
