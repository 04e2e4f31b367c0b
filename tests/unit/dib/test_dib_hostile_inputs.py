"""dib's element files are untrusted input: regular files only, bounded, strictly typed.

An element on ELEMENTS_PATH may come from anywhere. Each file dib parses
(``element-deps``, ``element-provides``, ``package-installs.yaml``, ``pkg-map``, an
element's ``block-device-*.yaml``, a layout named by DIB_BLOCK_DEVICE_CONFIG) is
refused with dib's own clear error naming the element and the file when it is a FIFO
(which would block the build for ever), a device (endless), a directory, too large
(a 200 MB element-deps once cost a build 8 GB), nested too deep or an alias bomb, or
of the wrong type (``uninstall: "false"`` read as true).

Runs on the hosts' own Python too (3.9): no newer syntax here.
"""

import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest
import yaml

from dib import safeyaml
from dib.blockdevice.config import from_config, from_elements
from dib.blockdevice.layout import LayoutError, parse_layout_text
from dib.elements import Element, index_elements
from dib.errors import ConfigError, DibError, ElementError
from dib.packages import Distro, load_pkg_map, parse_package_installs, write_pkg_maps
from dib.phases import merge_elements

HUGE = 200 << 20  # a sparse file: 200 MB that cost no disk


def make_element(root: Path, name: str = "hostile") -> Path:
    path = root / name
    path.mkdir(parents=True)
    return path


def special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:  # huge
        with path.open("wb") as out:
            out.truncate(HUGE)


KINDS = {"fifo": "a FIFO", "device": "a character device", "directory": "a directory",
         "huge": "larger than 256 KiB"}


def load(element_dir: Path) -> Element:
    return index_elements([element_dir.parent])[element_dir.name]


def parse_installs(element_dir: Path) -> object:
    return parse_package_installs(Element(element_dir.name, element_dir, (), ()))


def parse_pkg_map(element_dir: Path) -> object:
    return load_pkg_map(Element(element_dir.name, element_dir, (), ()))


def layout_of(element_dir: Path) -> object:
    return from_elements([element_dir], "amd64")


FILES = [
    ("element-deps", load, ElementError),
    ("element-provides", load, ElementError),
    ("package-installs.yaml", parse_installs, ConfigError),
    ("pkg-map", parse_pkg_map, ConfigError),
    ("block-device-default.yaml", layout_of, ConfigError),
]


def refused_quickly(call: Callable[[], object], error: type, *words: str) -> str:
    """``call()`` raises ``error`` at once, in bounded memory; its message has ``words``."""
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(error) as caught:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert peak < 16 << 20, f"peak {peak} bytes"
    assert time.monotonic() - started < 10
    return message


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("file_name, reader, error", FILES, ids=[f[0] for f in FILES])
def test_an_element_file_that_is_not_a_small_regular_file_is_refused(
    file_name, reader, error, kind, tmp_path
):
    element = make_element(tmp_path)
    special(kind, element / file_name)
    refused_quickly(lambda: reader(element), error, "element 'hostile'", file_name, KINDS[kind])


def test_a_hostile_element_anywhere_on_the_path_is_named(tmp_path):
    make_element(tmp_path, "fine")
    special("huge", make_element(tmp_path, "big") / "element-deps")
    refused_quickly(lambda: index_elements([tmp_path]), ElementError, "element 'big'")


@pytest.mark.parametrize("name", ["x" * 300, "../../etc", "a\x1bb"])
def test_element_deps_name_directories(name, tmp_path):
    element = make_element(tmp_path)
    (element / "element-deps").write_text(f"base\n{name}\n")
    refused_quickly(lambda: load(element), ElementError, "element-deps", "not an element name")


def test_element_files_must_be_utf8(tmp_path):
    element = make_element(tmp_path)
    (element / "element-deps").write_bytes(b"base\n\xff\xfe\n")
    refused_quickly(lambda: load(element), ElementError, "element-deps", "not UTF-8")


def test_a_layout_named_by_the_environment_is_bounded_too(tmp_path):
    fifo = tmp_path / "layout.yaml"
    os.mkfifo(str(fifo))
    refused_quickly(lambda: from_config(f"file://{fifo}"), ConfigError,
                    "DIB_BLOCK_DEVICE_CONFIG", "a FIFO")
    huge = tmp_path / "huge.yaml"
    special("huge", huge)
    refused_quickly(lambda: from_config(f"file://{huge}"), ConfigError, "larger than")


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, words", [
    (deep(100_000), ["nested deeper than 50 levels"]),
    ("curl:\n  when: " + deep(1000) + "\n", ["nested deeper than 50 levels"]),
    ("&a [*a]\n", ["an alias refers to a node that contains it"]),
    (alias_bomb(), ["expands to more than"]),
    ("curl:\n  when: 2025-13-01\n", ["is not a valid date or time"]),  # a bare ValueError
])
def test_package_installs_shaped_to_hurt_is_invalid_yaml(text, words, tmp_path):
    element = make_element(tmp_path)
    (element / "package-installs.yaml").write_text(text)
    refused_quickly(lambda: parse_installs(element), ConfigError, "package-installs.yaml",
                    "invalid YAML", *words)


@pytest.mark.parametrize("text, words", [
    ("curl:\n  uninstall: 'false'\n", ["uninstall must be true or false"]),
    ("curl:\n  build-only: 'yes'\n", ["build-only must be true or false"]),
    ("curl:\n  when: [[DIB_X = 1]]\n", ["cannot read when"]),
    ("curl:\n  arch: [{amd64: 1}]\n", ["arch: must be architectures"]),
    ("curl:\n  installtype: [source]\n", ["installtype must be a single value"]),
    ("curl:\n  phase: [install.d]\n", ["phase must be a single value"]),
    ("- curl\n- [nested, list]\n", ["is not a package name"]),
    ("- {name: curl}\n", ["is not a package name"]),
    ('"curl\\nevil": {}\n', ["is not a package name"]),
    ('"curl evil": {}\n', ["is not a package name"]),
])
def test_package_installs_values_have_their_types(text, words, tmp_path):
    element = make_element(tmp_path)
    (element / "package-installs.yaml").write_text(text)
    refused_quickly(lambda: parse_installs(element), ConfigError, "package-installs.yaml", *words)


def test_booleans_and_architectures_read_as_documented(tmp_path):
    element = make_element(tmp_path)
    (element / "package-installs.yaml").write_text(
        "a:\n  uninstall: true\nb:\n  build-only: false\nc:\n  uninstall:\n"
        "d:\n  arch: [amd64, 'i386,arm64']\n  dib_python_version: 3\n")
    requests = {r.name: r for r in parse_installs(element)}
    assert requests["a"].uninstall and not requests["b"].build_only
    assert not requests["c"].uninstall
    assert requests["d"].arch == ("amd64", "i386", "arm64")
    assert requests["d"].dib_python_version == "3"


@pytest.mark.parametrize("data, words", [
    ({"distro": []}, ["pkg-map: distro", "expected a JSON object"]),
    ({"family": {"debian": {"a": ["b"]}}}, ["family.debian.a", "expected a package name"]),
    ({"release": {"debian": {"bookworm": "x"}}}, ["release.debian.bookworm"]),
    ([1, 2], ["expected a JSON object"]),
])
def test_pkg_map_has_its_shape(data, words, tmp_path):
    element = make_element(tmp_path)
    (element / "pkg-map").write_text(json.dumps(data))
    refused_quickly(lambda: parse_pkg_map(element), ConfigError, *words)


def test_a_pkg_map_nested_too_deep_is_invalid_json(tmp_path):
    element = make_element(tmp_path)
    (element / "pkg-map").write_text(deep(100_000))
    refused_quickly(lambda: parse_pkg_map(element), ConfigError, "pkg-map", "invalid JSON")


def test_an_empty_pkg_map_still_writes_its_file(tmp_path):
    element = make_element(tmp_path, "mapped")
    (element / "pkg-map").write_text("{}")
    write_pkg_maps([Element("mapped", element, (), ())], _debian(), tmp_path / "maps")
    assert (tmp_path / "maps" / "mapped").read_text() == ""


def _debian() -> Distro:
    return Distro("debian", "bookworm")


@pytest.mark.parametrize("text, words", [
    ("- local_loop:\n    name: " + deep(100_000) + "\n", ["nested deeper than 50 levels"]),
    ("&a [*a]\n", ["an alias refers to a node that contains it"]),
    (alias_bomb(), ["expands to more than"]),
    ("- local_loop:\n    name: 0000-01-01\n", ["is not a valid date or time"]),
])
def test_a_layout_shaped_to_hurt_is_a_layout_error(text, words, tmp_path):
    refused_quickly(lambda: parse_layout_text(text, "hostile.yaml"), LayoutError, *words)


# ---- the bounded loader itself ---------------------------------------------------------


def test_the_bounded_loader_reads_what_safe_load_reads():
    text = "a: [1, {b: c}]\nd: &x {e: f}\ng: *x\nh:\n  <<: *x\n  i: j\n"
    assert safeyaml.safe_load(text) == yaml.safe_load(text)


@pytest.mark.parametrize("levels, fine", [(safeyaml.MAX_DEPTH, True),
                                          (safeyaml.MAX_DEPTH + 1, False)])
def test_the_depth_bound_is_exact(levels, fine):
    text = deep(levels)
    if fine:
        assert safeyaml.safe_load(text) is not None
    else:
        with pytest.raises(safeyaml.TooComplex):
            safeyaml.safe_load(text)


def test_too_complex_is_a_yaml_error_with_a_line():
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        safeyaml.safe_load("ok: 1\nbad: " + deep(60) + "\n")
    mark = caught.value.problem_mark
    assert mark is not None and mark.line + 1 == 2


def test_dib_errors_stay_dib_errors():
    assert issubclass(ElementError, DibError) and issubclass(ConfigError, DibError)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_file_among_an_elements_hooks_is_refused(kind, tmp_path):
    element = make_element(tmp_path)
    (element / "install.d").mkdir()
    special(kind, element / "install.d" / "10-hostile")
    refused_quickly(lambda: merge_elements([Element("hostile", element, (), ())],
                                           tmp_path / "merged"),
                    ElementError, "element 'hostile'", "10-hostile", "not a regular file")
