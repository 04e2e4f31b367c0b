"""The installed-tree cache's key: every input of the cached phases, nothing per build."""

from __future__ import annotations

from pathlib import Path

import pytest

from dib.elements import Element
from dib.treekey import keyed_environment, tree_key

BUILD = "/tmp/dib_build.abc123"
OUTPUT = "/out/images/debian-minimal"


def element(root: Path, name: str, files: dict[str, str]) -> Element:
    path = root / name
    for relative, text in files.items():
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if relative.split("/")[0].endswith(".d"):
            target.chmod(0o755)
    return Element(name, path, (), ())


@pytest.fixture
def elements(tmp_path):
    return [
        element(tmp_path, "base-os", {
            "root.d/10-base": "#!/bin/sh\necho base\n",
            "install.d/20-tools": "#!/bin/sh\necho tools\n",
            "finalise.d/90-last": "#!/bin/sh\necho last\n",
            "cleanup.d/90-tidy": "#!/bin/sh\necho tidy\n",
            "package-installs.yaml": "vim:\n",
            "README.rst": "docs\n",
            "data/motd": "hello\n",
        }),
        element(tmp_path, "extra", {"post-install.d/50-x": "#!/bin/sh\n"}),
    ]


ENV = {"DIB_RELEASE": "bookworm", "ARCH": "amd64", "DIB_DISTRIBUTION_MIRROR": "http://m/debian",
       "TMP_BUILD_DIR": BUILD, "IMAGE_NAME": OUTPUT, "http_proxy": "http://tok1:x@127.0.0.1:1",
       "DIB_ARGS": f"-o {OUTPUT} debian-minimal", "DIB_MOUNTED": f"{BUILD}/mnt"}


def key(elements, env=None, packages=()):
    return tree_key(elements, env or ENV, packages, [BUILD, OUTPUT])


def edit(path: Path, text: str = "#!/bin/sh\necho changed\n") -> None:
    path.write_text(text)


@pytest.mark.parametrize("relative", ["root.d/10-base", "install.d/20-tools",
                                      "package-installs.yaml", "data/motd"])
def test_a_change_to_what_a_cached_phase_reads_misses(elements, relative):
    before = key(elements)
    edit(elements[0].path / relative)
    assert key(elements) != before


def test_a_new_hook_in_a_cached_phase_misses(elements):
    before = key(elements)
    (elements[1].path / "install.d").mkdir()
    edit(elements[1].path / "install.d/99-new")
    assert key(elements) != before


def test_an_executable_bit_is_part_of_the_key(elements):
    before = key(elements)
    (elements[0].path / "data/motd").chmod(0o755)
    assert key(elements) != before


@pytest.mark.parametrize("relative", ["finalise.d/90-last", "cleanup.d/90-tidy", "README.rst"])
def test_a_change_to_a_phase_that_still_runs_or_to_docs_hits(elements, relative):
    before = key(elements)
    edit(elements[0].path / relative)
    assert key(elements) == before


def test_a_new_finalise_hook_hits(elements):
    before = key(elements)
    (elements[1].path / "finalise.d").mkdir()
    edit(elements[1].path / "finalise.d/10-new")
    assert key(elements) == before


@pytest.mark.parametrize("name, value", [("DIB_RELEASE", "trixie"), ("ARCH", "arm64"),
                                         ("DIB_DISTRIBUTION_MIRROR", "http://other/debian"),
                                         ("DIB_REPOSITORY_STATE", "snap:abc"),
                                         ("DIB_NEW_SETTING", "1")])
def test_a_setting_the_hooks_see_is_part_of_the_key(elements, name, value):
    assert key(elements, {**ENV, name: value}) != key(elements)


@pytest.mark.parametrize("name, value", [
    ("TMP_BUILD_DIR", "/tmp/dib_build.other"), ("IMAGE_NAME", "/elsewhere/img"),
    ("http_proxy", "http://tok2:x@127.0.0.1:2"), ("HTTPS_PROXY", "http://p:3"),
    ("DIB_ARGS", "-o /elsewhere/img debian-minimal"), ("TMPDIR", "/var/tmp"),
    ("DIB_TREE_CACHE", "refresh"), ("DIB_IMAGE_CACHE", "/c2"), ("DIB_OFFLINE", "1"),
])
def test_per_build_settings_are_not(elements, name, value):
    assert key(elements, {**ENV, name: value}) == key(elements)


def test_a_value_naming_the_build_directory_is_not_keyed():
    env = {"DIB_X": f"{BUILD}/hooks/file", "DIB_Y": "kept"}
    assert keyed_environment(env, [BUILD]) == {"DIB_Y": "kept"}


def test_a_setting_naming_a_file_keys_its_content(elements, tmp_path):
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"key one")
    env = {**ENV, "DIB_APT_KEYRING": str(keyring)}
    before = key(elements, env)
    keyring.write_bytes(b"key two")
    assert key(elements, env) != before


def test_packages_asked_for_are_part_of_the_key_in_any_order(elements):
    assert key(elements, packages=("a", "b")) == key(elements, packages=("b", "a"))
    assert key(elements, packages=("a",)) != key(elements)


def test_element_order_and_names_are_part_of_the_key(elements):
    assert key(list(reversed(elements))) != key(elements)


def test_dib_code_is_part_of_the_key(elements, monkeypatch):
    before = key(elements)
    monkeypatch.setattr("dib.treekey.dib_code_digest", lambda: "other")
    assert key(elements) != before


def test_the_output_name_is_keyed_only_where_a_cached_phase_reads_it(elements):
    renamed = {**ENV, "IMAGE_NAME": "/out/images/other-name"}
    assert key(elements, renamed) == key(elements)
    edit(elements[0].path / "root.d/10-base", '#!/bin/sh\necho "$(basename $IMAGE_NAME)"\n')
    assert key(elements, renamed) != key(elements)
    moved = {**ENV, "IMAGE_NAME": "/elsewhere/debian-minimal"}
    assert tree_key(elements, moved, (), [BUILD, moved["IMAGE_NAME"]]) == key(elements)
