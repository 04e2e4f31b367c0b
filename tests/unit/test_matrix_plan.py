import pytest

from matrix.config.matrixfile import load_matrix
from matrix.hostgen.facts import HostFacts
from matrix.run.plan import SelectionError, make_plan, preflight
from results.model import CellKind

MATRIX = """\
hosts: [debian-bookworm, debian-trixie]
targets: [debian-bookworm, debian-forky, opensuse-leap-15]
checks: [tox]
exclude:
  - host: debian-trixie
    target: opensuse-*
    reason: no zypper on Debian
include:
  - host: ubuntu-noble
    target: debian-sid
    env: {DIB_EXTRA: "1"}
  - host: debian-trixie
    target: opensuse-leap-15
allowed-failures:
  - target: debian-forky
env:
  DIB_DEBUG: "1"
"""


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return make_plan(load_matrix(path))


def test_rows_and_columns(plan):
    assert [h.name for h in plan.hosts] == ["debian-bookworm", "debian-trixie", "ubuntu-noble"]
    assert plan.rows == ("hostgen", "tox", "debian-bookworm", "debian-forky", "opensuse-leap-15",
                         "debian-sid")


def test_dag_edges(plan):
    cells = plan.by_id()
    assert cells["debian-bookworm.hostgen"].needs == ()
    assert cells["debian-bookworm.tox"].needs == ("debian-bookworm.hostgen",)
    assert cells["debian-trixie.debian-forky"].needs == ("debian-trixie.hostgen",)
    assert cells["debian-trixie.debian-forky"].kind is CellKind.BUILD


def test_include_adds_cells_and_never_changes_existing(plan):
    cells = plan.by_id()
    assert "ubuntu-noble.debian-sid" in cells
    assert dict(cells["ubuntu-noble.debian-sid"].env)["DIB_EXTRA"] == "1"
    assert "ubuntu-noble.debian-bookworm" not in cells  # include adds a cell, not a product
    assert "debian-bookworm.debian-sid" not in cells
    # an explicitly included cell wins over a broad exclude
    assert cells["debian-trixie.opensuse-leap-15"].excluded is None
    assert cells["debian-bookworm.opensuse-leap-15"].excluded is None


def test_exclude_reason_and_voting(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.replace("  - host: debian-trixie\n    target: opensuse-leap-15\n", ""))
    cells = make_plan(load_matrix(path)).by_id()
    assert cells["debian-trixie.opensuse-leap-15"].excluded == "no zypper on Debian"
    assert not cells["debian-bookworm.debian-forky"].voting
    assert cells["debian-bookworm.debian-bookworm"].voting


def test_env_layers_matrix_then_target_then_include(plan):
    env = dict(plan.by_id()["debian-bookworm.debian-forky"].env)
    assert env == {"DIB_DEBUG": "1", "DIB_RELEASE": "forky"}


def test_selection_globs(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    plan = make_plan(load_matrix(path), ["debian-b*"], ["*-forky"])
    assert {c.id for c in plan.cells} == {"debian-bookworm.hostgen", "debian-bookworm.tox",
                                          "debian-bookworm.debian-forky"}
    with pytest.raises(SelectionError, match="matches none of"):
        make_plan(load_matrix(path), ["fedora-*"])


def facts(tools=("debootstrap", "runuser", "tox"), scripts=("bookworm",)):
    return HostFacts(tools=tuple(tools), debootstrap_scripts=tuple(scripts), arch="amd64")


def test_preflight_verdicts_match_the_seed_wording(plan):
    cells = plan.by_id()
    assert preflight(cells["debian-bookworm.debian-forky"], facts()) == (
        "No such script: /usr/share/debootstrap/scripts/forky")
    assert preflight(cells["debian-bookworm.opensuse-leap-15"], facts()) == "zypper not available"
    assert preflight(cells["debian-bookworm.tox"], facts(tools=("tox",))) == (
        "runuser not available")
    assert preflight(cells["debian-bookworm.debian-bookworm"], facts()) is None
    assert preflight(cells["debian-bookworm.debian-forky"], None) is None  # facts unknown
