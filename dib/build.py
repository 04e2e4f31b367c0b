"""One image build: resolve elements, run the phases, write the outputs."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Mapping, Optional, Tuple

from dib import breakpoints, chroot, environment, outputs
from dib.elements import Resolution, resolve_from_env
from dib.errors import CommandFailed, DibError
from dib.packages import Distro, normalise_arch, plan_packages, write_plan
from dib.phases import HookTree, Phase, merge_elements
from dib.run import Stopwatch, capture, run

LOG = logging.getLogger("dib")
TMPFS_MIN_AVAILABLE = 4 << 30


@dataclass(frozen=True)
class BuildOptions:
    elements: Tuple[str, ...]
    output: Path
    types: Tuple[str, ...] = ("qcow2",)
    arch: str = "amd64"
    trace: bool = False
    skip_base: bool = False
    packages: Tuple[str, ...] = ()
    image_size: Optional[int] = None
    checksum: bool = False
    offline: bool = False
    image_cache: Path = Path.home() / ".cache" / "image-create"
    tmpfs: bool = True
    compress: bool = True


@dataclass
class BuildResult:
    elements: List[str]
    images: List[Path]
    seconds: float
    phase_seconds: Dict[str, float] = field(default_factory=dict)


def _mem_available() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _remove_workdir(work: Path) -> None:
    chroot.release_all(work)  # refuses (raises) rather than delete through a live mount
    shutil.rmtree(work, ignore_errors=True)


def make_workdir(stack: contextlib.ExitStack, use_tmpfs: bool) -> Path:
    work = Path(tempfile.mkdtemp(prefix="dib_build."))
    stack.callback(_remove_workdir, work)
    if use_tmpfs and _mem_available() >= TMPFS_MIN_AVAILABLE:
        try:
            capture(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(work)])
            LOG.info("building in tmpfs %s", work)
        except DibError as err:
            LOG.info("tmpfs not available (%s); building on disk in %s", err, work)
    return work


class Builder:
    """Runs the phases of one build in ``work`` with the merged hooks ``tree``."""

    def __init__(
        self,
        opts: BuildOptions,
        resolution: Resolution,
        tree: HookTree,
        root: Path,
        env: Dict[str, str],
        breaks: FrozenSet[str] = frozenset(),
    ):
        self.breaks = breaks
        self.opts = opts
        self.resolution = resolution
        self.tree = tree
        self.root = root
        self.env = env
        self.phase_seconds: Dict[str, float] = {}

    def run_phase(self, phase: Phase) -> None:
        scripts = self.tree.scripts(phase)
        stops = {f"before-{phase.label}", f"after-{phase.label}"} & self.breaks
        if not scripts and not stops:
            return
        watch = Stopwatch()
        LOG.info("---- phase %s: %d script(s)", phase.dirname, len(scripts))
        if phase.in_chroot:
            with contextlib.ExitStack() as stack:
                stack.enter_context(chroot.chroot_environment(self.root))
                self._copy_hooks_into_target(stack)
                self._break("before", phase)
                for script in scripts:
                    self._run_in_chroot(phase, script)
                self._break("after", phase)
        else:
            self._break("before", phase)
            for script in scripts:
                self._run_outside(phase, script)
            self._break("after", phase)
        self.phase_seconds[phase.label] = round(watch.seconds, 2)

    def host_env(self) -> Dict[str, str]:
        """What a hook on the build machine sees (the element bin/ on PATH)."""
        return {**self.env, "PATH": environment.host_path(self.tree.root, self.env)}

    def _break(self, when: str, phase: Phase) -> None:
        point = f"{when}-{phase.label}"
        if point not in self.breaks:
            return
        if phase.in_chroot:
            breakpoints.stop_here(point, environment.for_chroot(self.env), chroot_root=self.root)
        else:
            breakpoints.stop_here(point, self.host_env(), cwd=self.root)

    def _copy_hooks_into_target(self, stack: contextlib.ExitStack) -> None:
        in_target = self.root / environment.IN_TARGET_HOOKS.lstrip("/")
        if in_target.exists():
            shutil.rmtree(in_target)
        stack.callback(shutil.rmtree, in_target, True)
        shutil.copytree(self.tree.root, in_target, symlinks=False)

    def _executable(self, phase: Phase, script: Path) -> bool:
        if script.stat().st_mode & 0o111:
            return True
        LOG.warning("skipping %s/%s: not executable", phase.dirname, script.name)
        return False

    def _run_outside(self, phase: Phase, script: Path) -> None:
        if not self._executable(phase, script):
            return
        env = {**self.host_env(), **environment.python_for_hooks()}
        runner = self.tree.root / "dib-run-hook"
        env_files = [str(p) for p in self.tree.environment_files()]
        self._run_hook(phase, script, [str(runner), str(script), *env_files], env)

    def _run_in_chroot(self, phase: Phase, script: Path) -> None:
        if not self._executable(phase, script):
            return
        inside = environment.IN_TARGET_HOOKS
        env = environment.for_chroot(self.env)
        env_files = [f"{inside}/environment.d/{p.name}" for p in self.tree.environment_files()]
        cmd = [
            "chroot",
            str(self.root),
            f"{inside}/dib-run-hook",
            f"{inside}/{phase.dirname}/{script.name}",
            *env_files,
        ]
        self._run_hook(phase, script, cmd, env)

    def _run_hook(self, phase: Phase, script: Path, cmd: List[str], env: Dict[str, str]) -> None:
        tag = f"{phase.dirname}/{script.name}"
        watch = Stopwatch()
        LOG.info("running %s", tag)
        try:
            run(cmd, tag=tag, env=env)
        except CommandFailed as err:
            cause = next((line.strip() for line in reversed(err.tail) if line.strip()), "")
            message = f"{tag} failed with exit code {err.returncode}"
            raise DibError(f"{message}: {cause}" if cause else message) from None
        LOG.info("finished %s in %.1f s", tag, watch.seconds)


def build_environment(
    opts: BuildOptions,
    resolution: Resolution,
    work: Path,
    root: Path,
    tree: HookTree,
    base: Mapping[str, str],
) -> Dict[str, str]:
    env = environment.curated(base)
    env.update(
        {
            "ARCH": normalise_arch(opts.arch),
            "IMAGE_NAME": opts.output.name,
            "IMAGE_ELEMENT": " ".join(resolution.names),
            "TMP_BUILD_DIR": str(work),
            "TMP_HOOKS_PATH": str(tree.root),
            "TARGET_ROOT": str(root),
            "TMP_MOUNT_PATH": str(root),
            "DIB_IMAGE_CACHE": str(opts.image_cache),
            "DIB_OFFLINE": "1" if opts.offline else "",
            "DIB_DEBUG_TRACE": "1" if opts.trace else "0",
        }
    )
    return env


def build(opts: BuildOptions, base_env: Mapping[str, str]) -> BuildResult:
    environment.ensure_root()
    watch = Stopwatch()
    requested = list(opts.elements) if opts.skip_base else ["base", *opts.elements]
    resolution = resolve_from_env(requested, base_env)
    breaks = breakpoints.parse(base_env)  # a bad value fails before any work
    LOG.info("elements: %s", " ".join(resolution.names))
    opts.image_cache.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = make_workdir(stack, opts.tmpfs)
        tree = merge_elements(resolution.elements, work / "hooks")
        environment.write_runner(tree.root)
        root = work / "mnt"
        root.mkdir()
        env = build_environment(opts, resolution, work, root, tree, base_env)
        sourced = environment.sourced_environment(env, tree.environment_files())
        distro = Distro(sourced.get("DISTRO_NAME", ""), sourced.get("DIB_RELEASE", ""))
        compression = outputs.qcow2_compression(sourced, opts.compress)  # bad value: fail now
        plan = plan_packages(resolution.elements, distro, opts.arch, sourced, opts.packages)
        write_plan(plan, tree.root / "package-installs")
        builder = Builder(opts, resolution, tree, root, env, breaks)
        try:
            for phase in Phase:
                builder.run_phase(phase)
        except DibError:
            if breakpoints.AFTER_ERROR in breaks:
                breakpoints.stop_here(breakpoints.AFTER_ERROR, builder.host_env(), cwd=root)
            raise
        if chroot.mounts_under(root):
            raise DibError(f"something is still mounted under {root}; refusing to package it")
        images = outputs.make_outputs(
            root, opts.output, opts.types, work, opts.image_size, opts.checksum, compression
        )
    for image in images:
        LOG.info("wrote %s (%d MiB)", image, image.stat().st_size >> 20)
    return BuildResult(resolution.names, images, round(watch.seconds, 2), builder.phase_seconds)


__all__ = ["BuildOptions", "BuildResult", "build", "run"]
