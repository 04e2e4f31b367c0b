"""Which CPU architectures this machine can run programs of: natively, or through a
binfmt_misc handler of the kernel (qemu-user) for a foreign one.

A foreign build (``dib-build -a arm64`` on an amd64 machine) runs the image's own
programs in its chroot: debootstrap's second stage, every hook, apt's maintainer
scripts. The kernel hands such a program to the interpreter of a registered binfmt
handler; dib copies nothing into the image, so the handler must carry the
*fix-binary* flag (``F``: the kernel opened the interpreter when it was registered,
so it works inside any chroot and any container of this kernel). Debian's
``qemu-user-static`` registers its handlers that way.

``registered_handlers()`` lists what ``/proc/sys/fs/binfmt_misc`` holds (another
directory for tests: the ``DIB_BINFMT_MISC_DIR`` variable or a parameter);
``can_run(arch)`` and ``require(arch)`` answer for one architecture (the latter
raises :class:`ArchError` with a message that says how to fix it); ``host_facts()``
is the whole picture as plain data, also printed by ``python -m dib.arch``.

Standard library only: this runs on every build host's own Python (3.9 and newer).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import struct
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dib import spawn
from dib.errors import DibError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_DIR_VAR = "DIB_BINFMT_MISC_DIR"  # tests point it at a fake directory
# `uname -m` (and qemu's CPU names) -> Debian architecture names, as dib's -a takes them.
MACHINE_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv8l": "armhf",
    "armv6l": "armel",
    "arm": "armhf",
    "ppc64le": "ppc64el",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64el": "mips64el",
    "mipsel": "mipsel",
    "loongarch64": "loong64",
}
# ELF (class, byte order, e_machine) -> the Debian architectures such programs are.
ELF_ARCHES: Dict[Tuple[int, int, int], Tuple[str, ...]] = {
    (2, 1, 0x3E): ("amd64",),
    (1, 1, 0x03): ("i386",),
    (2, 1, 0xB7): ("arm64",),
    (1, 1, 0x28): ("armhf", "armel"),
    (2, 1, 0x15): ("ppc64el",),
    (2, 2, 0x15): ("ppc64",),
    (2, 2, 0x16): ("s390x",),
    (2, 1, 0xF3): ("riscv64",),
    (2, 1, 0x08): ("mips64el",),
    (1, 1, 0x08): ("mipsel",),
    (2, 1, 0x102): ("loong64",),
}
# What a machine of one architecture also runs without help (its kernel's compat mode).
ALSO_NATIVE = {"amd64": ("i386",)}
# The packages that provide handlers, for the message that says how to get one.
FIX_HINT = (
    "register one on the machine that runs the build (its containers share the kernel's "
    "handlers): on Debian or Ubuntu `apt-get install qemu-user-static binfmt-support` "
    "(handlers with the fix-binary flag F; `update-binfmts --enable` if they are "
    "disabled), after `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` if "
    "that is not mounted; `./quickstart setup` does both. Check with "
    "`cat /proc/sys/fs/binfmt_misc/qemu-{cpu}` (enabled, flags with F)"
)
QEMU_CPU = {"arm64": "aarch64", "amd64": "x86_64", "armhf": "arm", "armel": "arm",
            "ppc64el": "ppc64le", "loong64": "loongarch64"}


class ArchError(DibError):
    """This machine cannot run programs of the build's architecture."""


def normalise(arch: str) -> str:
    """A Debian architecture name for ``arch`` (``x86_64`` -> ``amd64``, ``aarch64`` ->
    ``arm64``); unknown names are returned as they are."""
    return MACHINE_ARCH.get(arch, arch)


def host_arch() -> str:
    """This machine's own architecture, as Debian names it."""
    return normalise(platform.machine())


def native(arch: str, host: Optional[str] = None) -> bool:
    """Whether programs of ``arch`` run here without any handler."""
    host = host or host_arch()
    arch = normalise(arch)
    return arch == host or arch in ALSO_NATIVE.get(host, ())


@dataclass(frozen=True)
class Handler:
    """One registered binfmt_misc entry (a file under /proc/sys/fs/binfmt_misc)."""

    name: str
    arches: Tuple[str, ...]  # Debian architectures whose programs it takes; () if not ELF
    enabled: bool
    interpreter: str
    flags: str

    @property
    def fix_binary(self) -> bool:
        """F: the interpreter was opened at registration; works inside a chroot."""
        return "F" in self.flags

    @property
    def usable(self) -> bool:
        return self.enabled and self.fix_binary


def binfmt_dir(env: Optional[Mapping[str, str]] = None,
               directory: Optional[Path] = None) -> Path:
    if directory is not None:
        return Path(directory)
    value = (os.environ if env is None else env).get(BINFMT_DIR_VAR, "")
    return Path(value) if value else BINFMT_DIR


def is_mounted(directory: Path) -> bool:
    """binfmt_misc is there: its ``register`` and ``status`` files exist."""
    return (directory / "status").exists() and (directory / "register").exists()


def globally_enabled(directory: Path) -> bool:
    with contextlib.suppress(OSError):
        return (directory / "status").read_text().strip() == "enabled"
    return False


def _elf_arches(magic: bytes, offset: int) -> Tuple[str, ...]:
    if offset != 0 or len(magic) < 20 or magic[:4] != b"\x7fELF":
        return ()
    elf_class, order = magic[4], magic[5]
    machine = int.from_bytes(magic[18:20], "little" if order == 1 else "big")
    return ELF_ARCHES.get((elf_class, order, machine), ())


def _name_arches(name: str) -> Tuple[str, ...]:
    """A handler named after its qemu CPU (qemu-aarch64), for entries without ELF magic."""
    cpu = name[len("qemu-"):] if name.startswith("qemu-") else ""
    if not cpu:
        return ()
    arch = MACHINE_ARCH.get(cpu)
    return (arch,) if arch else ()


def parse_handler(name: str, text: str, enabled_globally: bool = True) -> Handler:
    """One entry from its file's text (``enabled``, ``interpreter``, ``flags``,
    ``offset``, ``magic`` lines)."""
    values: Dict[str, str] = {}
    enabled = False
    for line in text.splitlines():
        line = line.strip()
        if line in ("enabled", "disabled"):
            enabled = line == "enabled"
            continue
        key, _, value = line.partition(" ")
        values[key.rstrip(":")] = value.strip()
    arches: Tuple[str, ...] = ()
    with contextlib.suppress(ValueError):
        magic = bytes.fromhex(values.get("magic", ""))
        arches = _elf_arches(magic, int(values.get("offset", "0") or 0))
    return Handler(
        name=name,
        arches=arches or _name_arches(name),
        enabled=enabled and enabled_globally,
        interpreter=values.get("interpreter", ""),
        flags=values.get("flags", ""),
    )


def registered_handlers(directory: Optional[Path] = None,
                        env: Optional[Mapping[str, str]] = None) -> List[Handler]:
    """Every handler registered in binfmt_misc (empty when it is not mounted)."""
    where = binfmt_dir(env, directory)
    if not is_mounted(where):
        return []
    on = globally_enabled(where)
    found = []
    for entry in sorted(where.iterdir()):
        if entry.name in ("register", "status") or not entry.is_file():
            continue
        try:
            text = entry.read_text(errors="replace")
        except OSError:
            continue
        found.append(parse_handler(entry.name, text, on))
    return found


def handlers_by_arch(handlers: Sequence[Handler]) -> Dict[str, Handler]:
    """arch -> its handler (an enabled one with F preferred over a lesser one)."""
    best: Dict[str, Handler] = {}
    for handler in handlers:
        for arch in handler.arches:
            have = best.get(arch)
            if have is None or (handler.enabled, handler.fix_binary) > (have.enabled,
                                                                       have.fix_binary):
                best[arch] = handler
    return best


def try_mount(directory: Path = BINFMT_DIR) -> Optional[str]:
    """Mount binfmt_misc at ``directory``; None when it worked, else why not."""
    if os.geteuid() != 0:
        return "not root"
    done = spawn.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(directory)],
                     timeout=30, errors_apart=True)
    if done.timed_out:
        return "mount did not end within 30 s"
    if done.returncode != 0:
        return done.errors.strip() or f"mount exited with status {done.returncode}"
    return None


# A program that only exits 0, per architecture: (ELF e_machine, machine code). Used to
# ask the kernel itself when binfmt_misc cannot be read (a container without it mounted).
_PROBE_CODE = {
    # movz x0, #0; movz x8, #93 (exit); svc #0
    "arm64": (0xB7, struct.pack("<III", 0xD2800000, 0xD2800BA8, 0xD4000001)),
    # mov edi, 0; mov eax, 60 (exit); syscall
    "amd64": (0x3E, b"\xbf\x00\x00\x00\x00\xb8\x3c\x00\x00\x00\x0f\x05"),
}
_PROBE_BASE = 0x400000


def probe_program(arch: str) -> Optional[bytes]:
    """A minimal static ELF for ``arch`` that exits 0; None when dib has none for it."""
    spec = _PROBE_CODE.get(normalise(arch))
    if spec is None:
        return None
    machine, code = spec
    header_size, phdr_size = 64, 56
    total = header_size + phdr_size + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2, machine, 1, _PROBE_BASE + header_size + phdr_size, header_size, 0, 0,
        header_size, phdr_size, 1, 0, 0, 0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _PROBE_BASE, _PROBE_BASE, total, total, 0x1000)
    return header + phdr + code


def probe(arch: str) -> Optional[str]:
    """Run the minimal program of ``arch``: None when it ran, else why it did not
    ("no probe" when dib has no such program for ``arch``)."""
    program = probe_program(arch)
    if program is None:
        return f"dib has no test program for {arch}"
    with tempfile.TemporaryDirectory(prefix="dib-arch.") as tmp:
        path = Path(tmp) / f"probe-{arch}"
        path.write_bytes(program)
        path.chmod(0o755)
        try:
            done = spawn.run([str(path)], timeout=60)
        except OSError as err:
            if err.errno == errno.ENOEXEC:
                return "the kernel does not know how to run it (Exec format error)"
            return str(err)
    if done.timed_out:
        return "it did not end within 60 s"
    return None if done.returncode == 0 else f"it exited with status {done.returncode}"


@dataclass(frozen=True)
class Support:
    """Whether programs of ``arch`` run here, and how (or why not)."""

    arch: str
    runnable: bool
    how: str  # native, binfmt, probe, or "" when not runnable
    handler: Optional[str] = None  # the binfmt entry's name
    reason: str = ""  # when not runnable: what is missing


def support(arch: str, directory: Optional[Path] = None,
            env: Optional[Mapping[str, str]] = None, *, mount: bool = True,
            host: Optional[str] = None) -> Support:
    """Whether this machine runs programs of ``arch``, through which handler, or why not.

    binfmt_misc is mounted first when it is not (root only, and only at the real
    location); when it still cannot be read, a tiny program of ``arch`` is run to ask
    the kernel itself (then the fix-binary flag cannot be checked)."""
    arch = normalise(arch)
    if native(arch, host):
        return Support(arch, True, "native")
    where = binfmt_dir(env, directory)
    mount_problem = ""
    if not is_mounted(where) and mount and where == BINFMT_DIR:
        mount_problem = try_mount(where) or ""
    if is_mounted(where):
        handler = handlers_by_arch(registered_handlers(where)).get(arch)
        if handler is None:
            return Support(arch, False, "", reason=f"no handler for {arch} is registered in "
                           f"{where}")
        if not handler.enabled:
            return Support(arch, False, "", handler.name,
                           f"the handler {handler.name} in {where} is disabled")
        if not handler.fix_binary:
            return Support(
                arch, False, "", handler.name,
                f"the handler {handler.name} in {where} lacks the fix-binary flag F "
                f"(flags: {handler.flags or 'none'}), so its interpreter "
                f"{handler.interpreter} would have to be inside the image; dib copies "
                "nothing into it",
            )
        return Support(arch, True, "binfmt", handler.name)
    why_not_mounted = f"binfmt_misc is not mounted at {where}"
    if mount_problem:
        why_not_mounted += f" and mounting it failed ({mount_problem})"
    if where != BINFMT_DIR:
        return Support(arch, False, "", reason=why_not_mounted)
    failed = probe(arch)
    if failed is None:
        return Support(arch, True, "probe")
    return Support(arch, False, "", reason=f"{why_not_mounted}; running a test {arch} "
                   f"program: {failed}")


def can_run(arch: str, directory: Optional[Path] = None,
            env: Optional[Mapping[str, str]] = None) -> bool:
    """True when programs of ``arch`` run here (natively, or through a usable handler)."""
    return support(arch, directory, env).runnable


def message(found: Support) -> str:
    """The error text for an architecture that cannot run here: what and how to fix."""
    cpu = QEMU_CPU.get(found.arch, found.arch)
    return (f"no binfmt handler for {found.arch}: {found.reason}; this {host_arch()} "
            f"machine cannot run the image's programs in its chroot. To fix it, "
            + FIX_HINT.format(cpu=cpu))


def require(arch: str, directory: Optional[Path] = None,
            env: Optional[Mapping[str, str]] = None) -> Support:
    """The preflight of a build for ``arch``: raises ArchError when it cannot run here."""
    found = support(arch, directory, env)
    if not found.runnable:
        raise ArchError(message(found))
    return found


@dataclass(frozen=True)
class HostFacts:
    """This machine's architectures, as plain data (for a matrix's host facts)."""

    host_arch: str
    binfmt_mounted: bool
    runnable: Tuple[str, ...]  # every architecture whose programs run here
    handlers: Tuple[Dict[str, object], ...] = field(default_factory=tuple)
    probed: Tuple[str, ...] = ()  # of ``runnable``: known by running a test program

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["runnable"] = list(self.runnable)
        data["handlers"] = [dict(h) for h in self.handlers]
        data["probed"] = list(self.probed)
        return data


def host_facts(directory: Optional[Path] = None,
               env: Optional[Mapping[str, str]] = None, *, probe_programs: bool = False
               ) -> HostFacts:
    """What runs here, without mounting anything. When binfmt_misc cannot be read (a
    container does not mount it) and ``probe_programs`` is set, the architectures dib
    has a test program for are tried by running it."""
    host = host_arch()
    where = binfmt_dir(env, directory)
    handlers = registered_handlers(where)
    runnable = {host, *ALSO_NATIVE.get(host, ())}
    runnable.update(arch for arch, h in handlers_by_arch(handlers).items() if h.usable)
    probed: List[str] = []
    if probe_programs and not is_mounted(where):
        probed = [a for a in sorted(_PROBE_CODE) if a not in runnable and probe(a) is None]
    runnable.update(probed)
    return HostFacts(
        host_arch=host,
        binfmt_mounted=is_mounted(where),
        runnable=tuple(sorted(runnable)),
        probed=tuple(probed),
        handlers=tuple(
            {"name": h.name, "arches": list(h.arches), "enabled": h.enabled,
             "fix_binary": h.fix_binary, "interpreter": h.interpreter}
            for h in handlers if h.arches
        ),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dib.arch",
        description="Which architectures' programs this machine runs (binfmt handlers).",
    )
    parser.add_argument("--check", metavar="ARCH",
                        help="exit 0 when ARCH runs here, else print why and exit 1")
    parser.add_argument("--binfmt-dir", type=Path, help=f"instead of {BINFMT_DIR}")
    parser.add_argument("--no-probe", action="store_true",
                        help="when binfmt_misc is not mounted, do not run test programs")
    args = parser.parse_args(argv)
    if args.check:
        found = support(args.check, args.binfmt_dir)
        if not found.runnable:
            print(f"ERROR: {message(found)}", file=sys.stderr)
            return 1
        print(f"{found.arch}: runs here ({found.how}"
              f"{', handler ' + found.handler if found.handler else ''})")
        return 0
    facts = host_facts(args.binfmt_dir, probe_programs=not args.no_probe)
    print(json.dumps(facts.to_dict(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
