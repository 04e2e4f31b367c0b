"""dib/arch.py: binfmt handlers read from a fake binfmt_misc directory, the preflight's
verdicts and message, and the fail-fast of a build. No handler is (un)registered."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dib import arch

# As Debian's qemu-user-static registers it (fix-binary flag F).
AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
ARM = """enabled
interpreter /usr/libexec/qemu-binfmt/arm-binfmt-P
flags: PF
offset 0
magic 7f454c4601010100000000000000000002002800
mask ffffffffffffff00fffffffffffffffffeffffff
"""
JAR = """enabled
interpreter /usr/bin/jexec
flags:
extension .jar
"""


def fake_binfmt(tmp_path: Path, status: str = "enabled", **handlers: str) -> Path:
    directory = tmp_path / "binfmt_misc"
    directory.mkdir()
    (directory / "status").write_text(status + "\n")
    (directory / "register").write_text("")
    for name, text in handlers.items():
        (directory / name.replace("_", "-")).write_text(text)
    return directory


def test_handlers_are_known_by_their_elf_magic(tmp_path):
    directory = fake_binfmt(
        tmp_path, qemu_aarch64=AARCH64, qemu_arm=ARM, jar=JAR,
        renamed=AARCH64.replace("PF", "F"),
    )
    found = {h.name: h for h in arch.registered_handlers(directory)}
    assert set(found) == {"qemu-aarch64", "qemu-arm", "jar", "renamed"}
    assert found["qemu-aarch64"].arches == ("arm64",)
    assert found["qemu-aarch64"].usable and found["qemu-aarch64"].fix_binary
    assert found["renamed"].arches == ("arm64",)  # the magic tells, not the name
    assert found["qemu-arm"].arches == ("armhf", "armel")
    assert found["jar"].arches == () and not found["jar"].fix_binary
    assert found["qemu-aarch64"].interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"


def test_a_handler_without_elf_magic_is_known_by_its_qemu_name():
    handler = arch.parse_handler("qemu-aarch64", "enabled\ninterpreter /q\nflags: F\n")
    assert handler.arches == ("arm64",) and handler.usable


def test_runnable_through_a_handler_with_the_fix_binary_flag(tmp_path):
    directory = fake_binfmt(tmp_path, qemu_aarch64=AARCH64)
    found = arch.support("arm64", directory, host="amd64")
    assert found.runnable and found.how == "binfmt" and found.handler == "qemu-aarch64"
    assert arch.can_run("aarch64", directory)  # the kernel's name works too
    assert arch.require("arm64", directory).handler == "qemu-aarch64"


@pytest.mark.parametrize(
    "files, status, reason",
    [
        ({}, "enabled", "no handler for arm64 is registered in"),
        ({"qemu_aarch64": AARCH64.replace("enabled", "disabled")}, "enabled", "is disabled"),
        ({"qemu_aarch64": AARCH64}, "disabled", "is disabled"),
        ({"qemu_aarch64": AARCH64.replace("flags: PF", "flags: P")}, "enabled",
         "lacks the fix-binary flag F (flags: P)"),
        ({"qemu_arm": ARM}, "enabled", "no handler for arm64"),
    ],
)
def test_missing_or_unusable_handlers_are_refused(tmp_path, files, status, reason):
    directory = fake_binfmt(tmp_path, status=status, **files)
    found = arch.support("arm64", directory, host="amd64")
    assert not found.runnable and reason in found.reason
    with pytest.raises(arch.ArchError) as caught:
        arch.require("arm64", directory)
    text = str(caught.value)
    assert text.startswith("no binfmt handler for arm64: ")
    assert "qemu-user-static" in text and "fix-binary" in text
    assert "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc" in text
    assert "/proc/sys/fs/binfmt_misc/qemu-aarch64" in text


def test_the_host_architecture_needs_no_handler(tmp_path, monkeypatch):
    empty = fake_binfmt(tmp_path)
    assert arch.support("amd64", empty, host="amd64").how == "native"
    assert arch.support("x86_64", empty, host="amd64").runnable
    assert arch.support("i386", empty, host="amd64").runnable  # the kernel's compat mode
    assert arch.support("arm64", empty, host="arm64").how == "native"
    assert not arch.support("amd64", empty, host="arm64").runnable
    monkeypatch.setattr(arch.platform, "machine", lambda: "aarch64")
    assert arch.host_arch() == "arm64" and arch.native("arm64")


def test_the_directory_comes_from_the_environment(tmp_path):
    directory = fake_binfmt(tmp_path, qemu_aarch64=AARCH64)
    env = {arch.BINFMT_DIR_VAR: str(directory)}
    assert arch.binfmt_dir(env) == directory
    assert arch.binfmt_dir({}) == arch.BINFMT_DIR
    assert arch.support("arm64", env=env, host="amd64").runnable


def test_a_fake_directory_that_is_not_mounted_is_never_mounted(tmp_path, monkeypatch):
    monkeypatch.setattr(arch, "try_mount", lambda *a: pytest.fail("must not mount"))
    monkeypatch.setattr(arch, "probe", lambda *a: pytest.fail("must not probe"))
    found = arch.support("arm64", tmp_path, host="amd64")
    assert not found.runnable
    assert found.reason == f"binfmt_misc is not mounted at {tmp_path}"


def test_the_real_location_is_mounted_when_not_mounted(tmp_path, monkeypatch):
    real = tmp_path / "proc-binfmt"
    real.mkdir()
    monkeypatch.setattr(arch, "BINFMT_DIR", real)

    def mount(directory):
        assert directory == real
        fake = fake_binfmt(tmp_path, qemu_aarch64=AARCH64)
        for item in fake.iterdir():
            (real / item.name).write_text(item.read_text())
        return None

    monkeypatch.setattr(arch, "try_mount", mount)
    assert arch.support("arm64", env={}, host="amd64").how == "binfmt"


def test_when_binfmt_misc_cannot_be_read_a_test_program_asks_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr(arch, "BINFMT_DIR", tmp_path)
    monkeypatch.setattr(arch, "try_mount", lambda directory: "permission denied")
    monkeypatch.setattr(arch, "probe", lambda name: None)
    assert arch.support("arm64", env={}, host="amd64").how == "probe"
    monkeypatch.setattr(arch, "probe", lambda name: "Exec format error")
    found = arch.support("arm64", env={}, host="amd64")
    assert not found.runnable
    assert "mounting it failed (permission denied)" in found.reason
    assert found.reason.endswith("running a test arm64 program: Exec format error")
    assert arch.support("arm64", env={}, host="amd64", mount=False).reason.startswith(
        f"binfmt_misc is not mounted at {tmp_path};"
    )


@pytest.mark.parametrize("name, machine", [("arm64", 0xB7), ("amd64", 0x3E)])
def test_probe_programs_are_minimal_static_elf_files(name, machine):
    program = arch.probe_program(name)
    assert program is not None and program[:4] == b"\x7fELF"
    assert program[4:6] == b"\x02\x01"  # 64-bit, little endian
    e_type, e_machine = struct.unpack_from("<HH", program, 16)
    entry, phoff = struct.unpack_from("<QQ", program, 24)
    assert (e_type, e_machine) == (2, machine)
    p_type, p_flags, p_offset, p_vaddr = struct.unpack_from("<IIQQ", program, phoff)
    assert (p_type, p_flags, p_offset) == (1, 5, 0)
    assert p_vaddr <= entry < p_vaddr + len(program)
    assert arch.probe_program("sparc64") is None


@pytest.mark.skipif(arch.host_arch() != "amd64", reason="runs an amd64 program")
def test_the_native_probe_program_runs():
    assert arch.probe("amd64") is None
    assert arch.probe("sparc64") == "dib has no test program for sparc64"


def test_host_facts_are_plain_data(tmp_path, monkeypatch):
    monkeypatch.setattr(arch.platform, "machine", lambda: "x86_64")
    directory = fake_binfmt(
        tmp_path, qemu_aarch64=AARCH64, qemu_arm=ARM.replace("PF", "P"), jar=JAR
    )
    facts = arch.host_facts(directory)
    assert facts.host_arch == "amd64" and facts.binfmt_mounted
    assert facts.runnable == ("amd64", "arm64", "i386")  # qemu-arm lacks F
    data = json.loads(json.dumps(facts.to_dict()))
    assert [h["name"] for h in data["handlers"]] == ["qemu-aarch64", "qemu-arm"]
    assert data["handlers"][1]["fix_binary"] is False
    assert not arch.host_facts(tmp_path / "nowhere").binfmt_mounted


def test_command_line(tmp_path, capsys):
    directory = fake_binfmt(tmp_path, qemu_aarch64=AARCH64)
    assert arch.main(["--binfmt-dir", str(directory)]) == 0
    assert json.loads(capsys.readouterr().out)["binfmt_mounted"] is True
    assert arch.main(["--check", "arm64", "--binfmt-dir", str(directory)]) == 0
    assert "arm64: runs here" in capsys.readouterr().out
    if arch.host_arch() != "riscv64":
        assert arch.main(["--check", "riscv64", "--binfmt-dir", str(directory)]) == 1
        assert "ERROR: no binfmt handler for riscv64" in capsys.readouterr().err


def test_host_facts_probe_when_binfmt_misc_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.setattr(arch.platform, "machine", lambda: "x86_64")
    tried = []
    monkeypatch.setattr(arch, "probe", lambda name: tried.append(name) or None)
    facts = arch.host_facts(tmp_path / "unmounted", probe_programs=True)
    assert tried == ["arm64"] and facts.probed == ("arm64",)
    assert facts.runnable == ("amd64", "arm64", "i386") and not facts.binfmt_mounted
    assert arch.host_facts(tmp_path / "unmounted").probed == ()
    mounted = fake_binfmt(tmp_path)
    assert arch.host_facts(mounted, probe_programs=True).probed == ()  # the list is the truth
