"""The matrix key registry-mirror and run's --registry-mirror: Docker Hub image hosts are
pulled through the mirror, other hosts untouched, bad values named with file, line, key."""

from pathlib import Path

import pytest

from matrix.cli import main
from matrix.config.diagnostics import ConfigError
from matrix.config.hosts import BootstrapBase, ImageBase
from matrix.config.matrixfile import load_matrix
from matrix.run.plan import make_plan

HUB_HOST = """\
name: hub-fedora
base:
  image: fedora:40
package-manager: dnf
packages: [python3]
"""
QUAY_HOST = """\
name: quay-thing
base:
  image: quay.io/someone/thing:1
package-manager: apt
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "hosts").mkdir(exist_ok=True)
    (tmp_path / "hosts" / "hub-fedora.yaml").write_text(HUB_HOST)
    (tmp_path / "hosts" / "quay-thing.yaml").write_text(QUAY_HOST)
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("hosts: [hosts/hub-fedora.yaml, hosts/quay-thing.yaml, debian-bookworm]\n"
                      "targets: [debian-bookworm]\n" + extra)
    return matrix


def bases(config) -> dict:
    return {h.name: h.base for h in config.hosts}


def test_without_a_mirror_nothing_changes(tmp_path):
    config = load_matrix(write(tmp_path))
    assert config.registry_mirror is None
    assert bases(config)["hub-fedora"] == ImageBase("fedora:40")


def test_the_key_sends_docker_hub_hosts_through_the_mirror(tmp_path):
    config = load_matrix(write(tmp_path, "registry-mirror: myregistry.example/hub/\n"))
    assert config.registry_mirror == "myregistry.example/hub"
    found = bases(config)
    assert found["hub-fedora"] == ImageBase("myregistry.example/hub/library/fedora:40",
                                            written="fedora:40")
    assert found["quay-thing"] == ImageBase("quay.io/someone/thing:1")
    assert isinstance(found["debian-bookworm"], BootstrapBase)
    plan = make_plan(config)
    assert {h.name: h.base for h in plan.hosts}["hub-fedora"].written == "fedora:40"


def test_the_command_line_overrides_the_key(tmp_path):
    matrix = write(tmp_path, "registry-mirror: myregistry.example/hub\n")
    config = load_matrix(matrix, overrides={"registry-mirror": "127.0.0.1:5000"})
    assert bases(config)["hub-fedora"].reference == "127.0.0.1:5000/library/fedora:40"


def test_a_bad_mirror_names_file_line_and_key(tmp_path):
    matrix = write(tmp_path, "registry-mirror: https://myregistry.example\n")
    with pytest.raises(ConfigError) as caught:
        load_matrix(matrix)
    text = str(caught.value)
    assert "matrix.yaml:3" in text and "registry-mirror" in text and "no scheme" in text
    with pytest.raises(ConfigError, match="--registry-mirror.*registry host"):
        load_matrix(write(tmp_path), overrides={"registry-mirror": "mirror/hub"})


def test_plan_prints_each_rewrite(tmp_path, capsys):
    matrix = write(tmp_path)
    assert main(["plan", str(matrix), "--registry-mirror", "myregistry.example"]) == 0
    out = capsys.readouterr().out
    assert ("registry mirror myregistry.example: hub-fedora: fedora:40 -> "
            "myregistry.example/library/fedora:40") in out
    assert "quay-thing" not in out.split("registry mirror", 1)[1]
