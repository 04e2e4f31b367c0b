"""The RPM targets ask a host for tools, not for a distribution: a Debian host with
dnf and zypper (hosts/debian-bookworm-rpmtools.yaml) passes their preflight."""

import pytest

from matrix.config.matrixfile import load_matrix
from matrix.hostgen.facts import HostFacts
from matrix.run.plan import make_plan, preflight

RPM_TARGETS = {"fedora-43": "dnf", "centos-stream9": "dnf", "opensuse-leap-15": "zypper"}
MATRIX = """\
hosts: [debian-bookworm, debian-bookworm-rpmtools]
targets: [fedora-43, centos-stream9, opensuse-leap-15]
checks: []
"""


@pytest.fixture
def cells(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return make_plan(load_matrix(path)).by_id()


def debian_facts(*extra):
    return HostFacts(tools=tuple(sorted(("debootstrap", "python3", "runuser", *extra))),
                     debootstrap_scripts=("bookworm",), arch="x86_64", os_id="debian",
                     os_version="12")


@pytest.mark.parametrize("target,tool", sorted(RPM_TARGETS.items()))
def test_requires_names_the_tool(cells, target, tool):
    cell = cells[f"debian-bookworm-rpmtools.{target}"]
    assert cell.target.requires.tools == (tool,)
    assert cell.target.requires.debootstrap_script is None


@pytest.mark.parametrize("target,tool", sorted(RPM_TARGETS.items()))
def test_debian_host_with_the_tool_passes(cells, target, tool):
    rpmtools = debian_facts("dnf", "zypper")
    assert preflight(cells[f"debian-bookworm-rpmtools.{target}"], rpmtools) is None
    assert preflight(cells[f"debian-bookworm.{target}"], debian_facts()) == f"{tool} not available"
