"""elements/dpkg/shims/kmodinfo.py (modinfo's firmware answers for every module of a
kernel) and the ``modinfo`` function of mkinitramfs-paths.sh that gives them."""

import importlib.util
import os
import struct
import subprocess
from pathlib import Path

import pytest

SHIMS = Path(__file__).resolve().parents[3] / "elements" / "dpkg" / "shims"
VERSION = "6.1.0-9-amd64"


@pytest.fixture(scope="module")
def kmodinfo():
    spec = importlib.util.spec_from_file_location("kmodinfo", SHIMS / "kmodinfo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def elf_module(modinfo: bytes, section_name: bytes = b".modinfo") -> bytes:
    """A minimal ELF64 little-endian relocatable object: null, the named section, .shstrtab."""
    names = b"\0" + section_name + b"\0.shstrtab\0"
    data_at = 64
    names_at = data_at + len(modinfo)
    table_at = (names_at + len(names) + 7) & ~7
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, table_at, 0, 64, 0, 0, 64, 3, 2)
    body = modinfo + names + bytes(table_at - names_at - len(names))
    section = struct.Struct("<IIQQQQIIQQ")
    table = bytes(64)
    table += section.pack(1, 1, 2, 0, data_at, len(modinfo), 0, 0, 1, 0)
    table += section.pack(2 + len(section_name), 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
    return header + body + table


MODULES = {
    "kernel/drivers/gpu/amdgpu.ko":
        b"license=GPL\0firmware=amdgpu/a.bin\0firmware=amdgpu/b b.bin\0",
    "kernel/net/plain.ko": b"license=GPL\0description=no firmware=here\0",
    "kernel/net/empty-value.ko": b"\0\0firmware=\0firmware=x\0",
}


def modules_tree(root: Path) -> Path:
    modules = root / "lib/modules" / VERSION
    for relative, modinfo in MODULES.items():
        (modules / relative).parent.mkdir(parents=True, exist_ok=True)
        (modules / relative).write_bytes(elf_module(modinfo))
    (modules / "kernel/bad").mkdir()
    (modules / "kernel/bad/text.ko").write_text("not ELF")
    (modules / "kernel/bad/truncated.ko").write_bytes(elf_module(b"firmware=x\0")[:90])
    (modules / "kernel/bad/other-section.ko").write_bytes(elf_module(b"firmware=x\0", b".data"))
    (modules / "kernel/bad/compressed.ko.xz").write_bytes(b"\xfd7zXZ")
    (root / "elsewhere").mkdir()
    (root / "elsewhere/linked.ko").write_bytes(elf_module(b"firmware=x\0"))
    (modules / "build").symlink_to(root / "elsewhere")
    (modules / "kernel/net/link.ko").symlink_to(modules / "kernel/net/plain.ko")
    return modules


def test_the_answers_are_modinfos_firmware_lines(kmodinfo, tmp_path):
    modules = modules_tree(tmp_path)
    answers = tmp_path / "answers"
    answers.mkdir()
    assert kmodinfo.main([str(modules), str(answers)]) == 0
    found = {str(p.relative_to(answers)): p.read_bytes()
             for p in answers.rglob("*") if p.is_file()}
    assert found == {
        "kernel/drivers/gpu/amdgpu.ko": b"amdgpu/a.bin\namdgpu/b b.bin\n",
        "kernel/net/plain.ko": b"",
        "kernel/net/empty-value.ko": b"\nx\n",
    }  # unreadable, compressed, symlinked and linked-directory modules: modinfo's own


def test_bad_usage_is_exit_2(kmodinfo, tmp_path):
    assert kmodinfo.main([]) == 2
    assert kmodinfo.main([str(tmp_path / "missing"), str(tmp_path)]) == 2


def answer_through_the_shell(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``modinfo ARGV`` in a shell that sourced mkinitramfs-paths.sh with answers for the
    tree under tmp_path/root mounted at / by pretending: the paths asked are the tree's."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "modinfo").write_text('#!/bin/sh\necho "the real modinfo $*"\n')
    (fake / "modinfo").chmod(0o755)
    script = '. "$1"; shift; modinfo "$@"'
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "_DIB_KMOD_VERSION": VERSION,
           "_DIB_KMOD_ANSWERS": str(tmp_path / "answers")}
    return subprocess.run(["sh", "-c", script, "sh", str(SHIMS / "mkinitramfs-paths.sh"),
                           *argv], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def write_answers(tmp_path: Path) -> None:
    answers = tmp_path / "answers/kernel/drivers/gpu"
    answers.mkdir(parents=True)
    (answers / "amdgpu.ko").write_text("amdgpu/a.bin\n  spaced \\n\n")
    (tmp_path / "answers/kernel/plain.ko").write_text("")


def test_the_shell_answers_from_the_files(tmp_path):
    write_answers(tmp_path)
    asked = ["-k", VERSION, "-F", "firmware"]
    done = answer_through_the_shell(tmp_path, *asked,
                                    f"/lib/modules/{VERSION}/kernel/drivers/gpu/amdgpu.ko")
    assert done.stdout == "amdgpu/a.bin\n  spaced \\n\n"
    done = answer_through_the_shell(tmp_path, *asked, f"//lib/modules/{VERSION}/kernel/plain.ko")
    assert done.returncode == 0 and done.stdout == ""


@pytest.mark.parametrize("argv", [
    ["-k", VERSION, "-F", "firmware", f"/lib/modules/{VERSION}/kernel/unknown.ko"],
    ["-k", VERSION, "-F", "firmware", f"/lib/modules/{VERSION}/kernel/../kernel/plain.ko"],
    ["-k", VERSION, "-F", "firmware", f"/lib/modules/{VERSION}/kernel/./plain.ko"],
    ["-k", VERSION, "-F", "firmware", f"/usr/lib/modules/{VERSION}/kernel/plain.ko"],
    ["-k", VERSION, "-F", "firmware", "kernel/plain.ko"],
    ["-k", "6.1.0-10-amd64", "-F", "firmware", f"/lib/modules/{VERSION}/kernel/plain.ko"],
    ["-k", VERSION, "-F", "license", f"/lib/modules/{VERSION}/kernel/plain.ko"],
    ["-F", "firmware", f"/lib/modules/{VERSION}/kernel/plain.ko"],
    ["-k", VERSION, "-F", "firmware", "plain"],
])
def test_every_other_question_goes_to_modinfo(tmp_path, argv):
    write_answers(tmp_path)
    done = answer_through_the_shell(tmp_path, *argv)
    assert done.stdout == f"the real modinfo {' '.join(argv)}\n"


def test_without_answers_every_question_goes_to_modinfo(tmp_path):
    argv = ["-k", VERSION, "-F", "firmware", f"/lib/modules/{VERSION}/kernel/plain.ko"]
    done = answer_through_the_shell(tmp_path, *argv)  # no answers directory
    assert done.stdout.startswith("the real modinfo")
