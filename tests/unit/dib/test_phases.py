import pytest

from dib.elements import Element
from dib.errors import ElementError
from dib.phases import Phase, merge_elements, script_sort_key


def element(tmp_path, name, files):
    root = tmp_path / "src" / name
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return Element(name=name, path=root, deps=(), provides=())


def test_phases_run_in_the_designed_order():
    assert [p.dirname for p in Phase] == [
        "root.d",
        "extra-data.d",
        "pre-install.d",
        "install.d",
        "post-install.d",
        "post-root.d",
        "block-device.d",
        "pre-finalise.d",
        "finalise.d",
        "cleanup.d",
    ]
    assert [p.label for p in Phase if p.in_chroot] == [
        "pre-install",
        "install",
        "post-install",
        "finalise",
    ]


def test_scripts_sort_numerically_across_elements(tmp_path):
    a = element(tmp_path, "a", {"install.d/10-late": "", "install.d/5-early": ""})
    b = element(tmp_path, "b", {"install.d/07-middle": "", "install.d/README.txt~": ""})
    tree = merge_elements([a, b], tmp_path / "hooks")
    assert [p.name for p in tree.scripts(Phase.INSTALL)] == ["5-early", "07-middle", "10-late"]
    assert script_sort_key("5-x") < script_sort_key("10-x")


def test_same_script_name_in_two_elements_is_an_error(tmp_path):
    a = element(tmp_path, "a", {"install.d/50-setup": ""})
    b = element(tmp_path, "b", {"install.d/50-setup": ""})
    with pytest.raises(
        ElementError, match="'install.d/50-setup' is provided by both elements 'a' and 'b'"
    ):
        merge_elements([a, b], tmp_path / "hooks")


def test_environment_files_sorted_by_name(tmp_path):
    a = element(tmp_path, "a", {"environment.d/20-b.bash": "", "element-deps": "b\n"})
    b = element(tmp_path, "b", {"environment.d/10-a.bash": ""})
    tree = merge_elements([a, b], tmp_path / "hooks")
    assert [p.name for p in tree.environment_files()] == ["10-a.bash", "20-b.bash"]
    assert not (tree.root / "element-deps").exists()


def test_phase_files_with_a_dot_are_data_not_hooks(tmp_path):
    """dib-run-parts' rule: letters, digits, '_' and '-' only (dhcp-all-interfaces ships
    install.d/dhcp-all-interfaces.init beside its hooks)."""
    a = element(
        tmp_path,
        "a",
        {
            "install.d/50-dhcp-all-interfaces": "",
            "install.d/dhcp-all-interfaces.init": "",
            "install.d/dhcp-interface@.service": "",
            "install.d/60_under_score": "",
            "install.d/70 space": "",
        },
    )
    tree = merge_elements([a], tmp_path / "hooks")
    names = [p.name for p in tree.scripts(Phase.INSTALL)]
    assert names == ["50-dhcp-all-interfaces", "60_under_score"]
    assert tree.ignored(Phase.INSTALL) == [
        "70 space",
        "dhcp-all-interfaces.init",
        "dhcp-interface@.service",
    ]


def test_environment_files_may_have_dots_but_not_other_characters(tmp_path):
    a = element(
        tmp_path,
        "a",
        {"environment.d/10-dpkg.bash": "", "environment.d/20-x": "", "environment.d/30-x~ y": ""},
    )
    tree = merge_elements([a], tmp_path / "hooks")
    assert [p.name for p in tree.environment_files()] == ["10-dpkg.bash", "20-x"]


def test_a_linked_hook_is_traced_to_its_element(tmp_path):
    """install-types links install.d/<x>-source-install/* into install.d."""
    a = element(tmp_path, "a", {"install.d/a-source-install/50-build": ""})
    tree = merge_elements([a], tmp_path / "hooks")
    link = tree.root / "install.d" / "50-build"
    link.symlink_to("a-source-install/50-build")
    assert [p.name for p in tree.scripts(Phase.INSTALL)] == ["50-build"]
    origin = tree.origin(link)
    assert origin.element == "a"
    assert origin.source == a.path / "install.d" / "a-source-install" / "50-build"
