"""Foreign architectures on the orchestrator's side (issue 15 section 1): host facts
record the engine's binfmt handlers, a build without one gets an immediate verdict
(``no binfmt handler for arm64``), the boot row boots the target's architecture, and
verification wants dpkg's architecture to be the target's."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from matrix.config.hosts import BootstrapBase, HostDefinition, PackageManager
from matrix.config.targets import Requirements, Target
from matrix.hostgen.facts import (
    HostFacts,
    engine_is_local,
    facts_from_labels,
    machine_binfmt,
    with_machine_binfmt,
)
from matrix.run.plan import PlannedCell, preflight
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify
from matrix.verdict.verify import expectation_for, verify_images
from results.model import CellKind

HOST = HostDefinition("debian-bookworm", BootstrapBase("bookworm"), PackageManager.APT)
FACTS = HostFacts(tools=("debootstrap",), debootstrap_scripts=("bookworm",), arch="x86_64")
ARM64 = Target("debian-bookworm-arm64", ("debian-minbase",), (("DIB_RELEASE", "bookworm"),),
               ("tar",), "arm64", Requirements(("debootstrap",), "bookworm"))
AMD64 = replace(ARM64, name="debian-bookworm", arch="amd64")
AARCH64_MAGIC = ("7f454c460201010000000000000000000200b700")
MASK = "ffffffffffffff00fffffffffffffffffeffffff"


def build(target: Target) -> PlannedCell:
    return PlannedCell(HOST, target.name, CellKind.BUILD, ("debian-bookworm.hostgen",), target)


def fake_binfmt(root: Path, *entries: tuple[str, str, str]) -> Path:
    """A binfmt_misc directory: (name, state, flags) entries for aarch64 ELF programs."""
    root.mkdir()
    (root / "status").write_text("enabled\n")
    (root / "register").write_text("")
    for name, state, flags in entries:
        (root / name).write_text(
            f"{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\n"
            f"offset 0\nmagic {AARCH64_MAGIC}\nmask {MASK}\n")
    return root


def test_no_handler_is_an_immediate_verdict_in_its_own_category():
    facts = replace(FACTS, binfmt=())
    line = preflight(build(ARM64), facts)
    assert line == "no binfmt handler for arm64"
    verdict = classify(Evidence("debian-bookworm", ARM64.name, (line,), None), load_catalogue())
    assert verdict.category.id == "no-binfmt-handler"
    assert verdict.category.legend == "no binfmt handler for arm64"


def test_a_registered_handler_lets_the_build_run():
    facts = replace(FACTS, binfmt=(("arm64", "qemu-aarch64"),))
    assert preflight(build(ARM64), facts) is None
    assert facts.runs_arch("aarch64") is True  # the kernel's name is the same arch


def test_native_builds_need_no_handler():
    assert preflight(build(AMD64), replace(FACTS, binfmt=())) is None
    arm_host = replace(FACTS, arch="aarch64", binfmt=())
    assert preflight(build(ARM64), arm_host) is None
    assert arm_host.runs_arch("amd64") is False


def test_unknown_handlers_leave_the_verdict_to_dib():
    """An engine on another machine: its kernel's handlers are not known here."""
    assert FACTS.binfmt is None
    assert FACTS.runs_arch("arm64") is None
    assert preflight(build(ARM64), FACTS) is None


def test_other_preflights_still_come_after_the_architecture():
    facts = replace(FACTS, tools=(), binfmt=())
    assert preflight(build(ARM64), facts) == "no binfmt handler for arm64"
    facts = replace(FACTS, tools=(), binfmt=(("arm64", "qemu-aarch64"),))
    assert preflight(build(ARM64), facts) == "debootstrap not available"


def test_the_machines_handlers_are_read_enabled_and_fix_binary_only(tmp_path):
    root = fake_binfmt(tmp_path / "binfmt", ("qemu-aarch64", "enabled", "OCF"))
    assert machine_binfmt(root, {}) == (("arm64", "qemu-aarch64"),)
    root = fake_binfmt(tmp_path / "no-f", ("qemu-aarch64", "enabled", "OC"))
    assert machine_binfmt(root, {}) == ()  # without F the interpreter is not in the chroot
    root = fake_binfmt(tmp_path / "off", ("qemu-aarch64", "disabled", "OCF"))
    assert machine_binfmt(root, {}) == ()
    assert machine_binfmt(root, {"DOCKER_HOST": "tcp://builder.example:2376"}) is None
    assert engine_is_local({"DOCKER_HOST": "unix:///run/docker.sock"})


def test_facts_carry_the_handlers_through_their_label():
    facts = with_machine_binfmt(FACTS, (("arm64", "qemu-aarch64"),))
    again = facts_from_labels({"org.dib-matrix.facts": facts.to_json()})
    assert again == facts and again.binfmt == (("arm64", "qemu-aarch64"),)
    assert facts.summary().endswith("binfmt: arm64")
    assert "binfmt: no handlers" in replace(FACTS, binfmt=()).summary()
    older = FACTS.to_json().replace(',"binfmt":null', "")  # a label from before
    assert facts_from_labels({"org.dib-matrix.facts": older}).binfmt is None


def _tar(path: Path, arch: str) -> Path:
    status = "".join(
        f"Package: {name}\nStatus: install ok installed\nArchitecture: {a}\nVersion: 1\n\n"
        for name, a in (("dpkg", arch), ("bash", arch), ("base-files", arch),
                        ("debian-archive-keyring", "all")))
    files = {"etc/os-release": b"ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
             "var/lib/dpkg/status": status.encode()}
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = "".join(f"{n} 1 {a}\n" for n, a in (("dpkg", arch), ("bash", arch),
                                                   ("base-files", arch),
                                                   ("debian-archive-keyring", "all")))
    path.with_suffix(".packages").write_text(manifest)
    return path


def test_verification_wants_the_targets_architecture(tmp_path):
    expect = expectation_for(ARM64, dict(ARM64.env))
    assert expect.arch == "arm64"
    checks = {c.name: c for c in verify_images([_tar(tmp_path / "a.tar", "arm64")], expect,
                                               tmp_path, 30)}
    assert checks["architecture"].ok
    assert checks["architecture"].detail == \
        "arm64 (dpkg --print-architecture); 3 packages arm64"
    assert checks["os-release"].ok
    wrong = {c.name: c for c in verify_images([_tar(tmp_path / "b.tar", "amd64")], expect,
                                              tmp_path, 30)}
    assert not wrong["architecture"].ok
    assert wrong["architecture"].detail == \
        "image is amd64 (dpkg --print-architecture), target wants arm64"


def test_the_boot_row_boots_the_targets_architecture(monkeypatch, tmp_path):
    """cells._boot hands the target's arch to BootOptions (qemu-system-aarch64 for arm64)."""
    from matrix.run import cells

    seen = []

    def fake_boot(opts):
        seen.append(opts)
        raise cells.BootTestError("stop here")

    monkeypatch.setattr(cells, "run_boot_test", fake_boot)
    vm = replace(ARM64, name="debian-bookworm-arm64-vm", outputs=("qcow2",), boot_test=True,
                 elements=("debian-minimal", "vm", "block-device-efi"))
    images = tmp_path / "images" / HOST.name
    images.mkdir(parents=True)
    (images / f"{vm.name}.qcow2").write_bytes(b"")

    class Context:  # what a boot row reads of its run's context
        keys = reusable = None
        boot_timeout = 60.0
        settings = SimpleNamespace(config=SimpleNamespace(boot_timeout=60.0), run_dir=tmp_path)

        def log_path(self, cell):
            return tmp_path / "logs" / cell.host.name / "boot.log"

        def images_dir(self, host):
            return tmp_path / "images" / host

    ctx = Context()
    cell = PlannedCell(HOST, vm.name + ":boot", CellKind.BOOT, (), vm)
    report = cells.CellRunner(ctx).execute(cell, 1)
    assert seen and seen[0].arch == "arm64" and seen[0].qemu_binary == "qemu-system-aarch64"
    assert report.evidence == ("boot: qemu failed: stop here",)
