import json

import pytest

from dib.elements import Element
from dib.errors import ConfigError
from dib.packages import Distro, map_package, parse_package_installs, plan_packages, write_plan


def element(tmp_path, name, installs=None, pkg_map=None):
    root = tmp_path / name
    root.mkdir()
    if installs is not None:
        (root / "package-installs.yaml").write_text(installs)
    if pkg_map is not None:
        (root / "pkg-map").write_text(json.dumps(pkg_map))
    return Element(name=name, path=root, deps=(), provides=())


BOOKWORM = Distro("debian", "bookworm")


def test_defaults_phases_uninstall_and_order(tmp_path):
    e = element(
        tmp_path,
        "e",
        """
curl:
early:
  phase: pre-install.d
gone:
  uninstall: true
  phase: post-install.d
""",
    )
    plan = plan_packages([e], BOOKWORM, "amd64", {})
    assert plan["install.d"].install == ["curl"]
    assert plan["pre-install.d"].install == ["early"]
    assert plan["post-install.d"].uninstall == ["gone"]


def test_arch_and_not_arch_use_both_naming_schemes(tmp_path):
    e = element(
        tmp_path,
        "e",
        """
only-x86:
  arch: x86_64, i386
never-x86:
  not-arch: amd64
arm:
  arch: arm64
""",
    )
    plan = plan_packages([e], BOOKWORM, "amd64", {})
    assert plan["install.d"].install == ["only-x86"]


def test_when_conditions_all_must_hold(tmp_path):
    e = element(
        tmp_path,
        "e",
        """
eq:
  when: DIB_FLAVOUR = big
ne:
  when: DIB_FLAVOUR != big
both:
  when:
    - DIB_FLAVOUR = big
    - DIB_OTHER = 1
""",
    )
    assert plan_packages([e], BOOKWORM, "amd64", {"DIB_FLAVOUR": "big"})["install.d"].install == [
        "eq"
    ]
    assert plan_packages([e], BOOKWORM, "amd64", {})["install.d"].install == ["ne"]
    env = {"DIB_FLAVOUR": "big", "DIB_OTHER": "1"}
    assert plan_packages([e], BOOKWORM, "amd64", env)["install.d"].install == ["eq", "both"]


def test_pkg_map_release_beats_distro_beats_family_beats_default(tmp_path):
    pkg_map = {
        "release": {"debian": {"bookworm": {"a": "a-bookworm"}}},
        "distro": {"debian": {"a": "a-debian", "b": "b-debian"}},
        "family": {"debian": {"a": "a-fam", "b": "b-fam", "c": "c-fam"}},
        "default": {"a": "a-def", "b": "b-def", "c": "c-def", "d": "d-def"},
    }
    names = [map_package(n, pkg_map, BOOKWORM) for n in "abcde"]
    assert names == ["a-bookworm", "b-debian", "c-fam", "d-def", "e"]
    assert map_package("c", pkg_map, Distro("ubuntu", "noble")) == "c-fam"
    assert map_package("c", pkg_map, Distro("fedora", "43")) == "c-def"


def test_pkg_map_applies_to_its_own_element_and_extra_packages_go_to_install(tmp_path):
    mapped = element(tmp_path, "mapped", "python:\n", {"family": {"debian": {"python": "python3"}}})
    plain = element(tmp_path, "plain", "python:\n")
    plan = plan_packages([mapped, plain], BOOKWORM, "amd64", {}, extra_packages=["vim"])
    assert plan["install.d"].install == ["python3", "python", "vim"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a:\n  phase: root.d\n", "phase 'root.d' is not one of"),
        ("a:\n  colour: red\n", "unknown key"),
        ("a:\n  when: nonsense\n", "cannot read when"),
        ("a: [1\n", "invalid YAML"),
        ("just a string\n", "expected a mapping"),
    ],
)
def test_bad_package_installs_name_the_file(tmp_path, text, message):
    e = element(tmp_path, "bad", text)
    with pytest.raises(ConfigError, match=message) as err:
        parse_package_installs(e)
    assert "package-installs.yaml" in str(err.value)


def test_plan_files_one_package_per_line(tmp_path):
    e = element(tmp_path, "e", "a:\nb:\n  uninstall: true\n")
    write_plan(plan_packages([e], BOOKWORM, "amd64", {}), tmp_path / "plan")
    assert (tmp_path / "plan/install.install").read_text() == "a\n"
    assert (tmp_path / "plan/install.uninstall").read_text() == "b\n"
    assert (tmp_path / "plan/pre-install.install").read_text() == ""
