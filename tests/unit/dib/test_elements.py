from pathlib import Path

import pytest

from dib.elements import bundled_elements_dir, elements_path, index_elements, resolve
from dib.errors import ElementError


def make_element(root: Path, name: str, deps=(), provides=()) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if deps:
        (path / "element-deps").write_text("\n".join(deps) + "\n")
    if provides:
        (path / "element-provides").write_text("\n".join(provides) + "\n")
    return path


@pytest.fixture
def tree(tmp_path):
    make_element(tmp_path, "os", provides=["operating-system"])
    make_element(tmp_path, "vm", deps=["bootloader", "# comment only", ""])
    make_element(tmp_path, "bootloader", deps=["os"])
    make_element(tmp_path, "my-image", deps=["vm"])
    return index_elements([tmp_path])


def test_deps_are_expanded_and_ordered_before_dependents(tree):
    names = resolve(["my-image"], tree).names
    assert set(names) == {"my-image", "vm", "bootloader", "os"}
    assert names.index("os") < names.index("bootloader") < names.index("vm")
    assert names.index("vm") < names.index("my-image")


def test_missing_element_names_the_chain(tmp_path):
    make_element(tmp_path, "os", provides=["operating-system"])
    make_element(tmp_path, "vm", deps=["foo"])
    make_element(tmp_path, "my-image", deps=["vm", "os"])
    with pytest.raises(ElementError, match=r"element 'foo' not found \(needed by vm <- my-image\)"):
        resolve(["my-image"], index_elements([tmp_path]))


def test_missing_top_level_element_suggests_the_closest(tree):
    with pytest.raises(ElementError, match="did you mean 'my-image'"):
        resolve(["my-imag", "os"], tree)


def test_cycle_is_printed(tmp_path):
    make_element(tmp_path, "os", provides=["operating-system"])
    make_element(tmp_path, "a", deps=["b"])
    make_element(tmp_path, "b", deps=["c"])
    make_element(tmp_path, "c", deps=["a"])
    with pytest.raises(
        ElementError, match=r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    ):
        resolve(["a", "os"], index_elements([tmp_path]))


def test_two_providers_are_both_named(tmp_path):
    make_element(tmp_path, "debian-minimal", provides=["operating-system"])
    make_element(tmp_path, "ubuntu-minimal", provides=["operating-system"])
    with pytest.raises(ElementError, match="'debian-minimal' and 'ubuntu-minimal' provide"):
        resolve(["debian-minimal", "ubuntu-minimal"], index_elements([tmp_path]))


def test_virtual_dependency_is_satisfied_by_a_provider(tmp_path):
    make_element(tmp_path, "os", provides=["operating-system"])
    make_element(tmp_path, "needs-os", deps=["operating-system"])
    resolution = resolve(["needs-os", "os"], index_elements([tmp_path]))
    assert resolution.provided == {"operating-system": "os"}
    assert resolution.names.index("os") < resolution.names.index("needs-os")


def test_operating_system_is_required(tmp_path):
    make_element(tmp_path, "vm")
    with pytest.raises(ElementError, match="no element provides 'operating-system'"):
        resolve(["vm"], index_elements([tmp_path]))


def test_pulled_in_element_that_is_also_provided_is_an_error(tmp_path):
    make_element(tmp_path, "os", provides=["operating-system", "dhcp"])
    make_element(tmp_path, "dhcp")
    make_element(tmp_path, "net", deps=["dhcp"])
    with pytest.raises(ElementError, match="'os' already provides it"):
        resolve(["net", "os"], index_elements([tmp_path]))


def test_first_match_on_elements_path_wins(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    make_element(first, "thing", deps=["x"])
    make_element(second, "thing")
    index = index_elements([first, second])
    assert index["thing"].path == first / "thing"


def test_bundled_elements_come_last(tmp_path):
    paths = elements_path({"ELEMENTS_PATH": f"{tmp_path}:/nonexistent"})
    assert paths[0] == tmp_path
    assert paths[-1] == bundled_elements_dir()


def test_bundled_base_distros_resolve():
    index = index_elements([bundled_elements_dir()])
    for distro in (
        "debian-minbase",
        "ubuntu-minimal",
        "opensuse-minimal",
        "fedora-minimal",
        "centos-minimal",
    ):
        resolution = resolve(["base", distro], index)
        assert resolution.provided["operating-system"] == distro
    # diskimage-builder's debian-minimal: the bare tree plus its own content.
    full = resolve(["base", "debian-minimal"], index)
    assert full.provided["operating-system"] == "debian-minbase"
    assert {"debian-minimal", "debian-minbase", "debootstrap"} <= set(full.names)
