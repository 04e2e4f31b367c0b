"""One image build: resolve elements, run the phases, write the outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

import yaml

from dib import arch as arches
from dib import breakpoints, chroot, environment, failure, outputs, treecache
from dib.blockdevice import stage as disk_stage
from dib.elements import (
    Resolution,
    bundled_elements_dir,
    elements_path,
    resolve_from_env,
    with_block_device_default,
)
from dib.errors import CommandFailed, DibError
from dib.packages import Distro, normalise_arch, plan_packages, write_pkg_maps, write_plan
from dib.phases import HookTree, Phase, merge_elements
from dib.run import Stopwatch, capture, run
from dib.treekey import CACHED_PHASES

LOG = logging.getLogger("dib")
TMPFS_MIN_AVAILABLE = 4 << 30
# Hooks whose failure is more than "a hook failed": (element, phase) -> failure kind.
HOOK_KINDS = {("debootstrap", "root.d"): "debootstrap"}
# Where a hook process leaves its own failure detail (failure.HOOK_DETAIL_VAR): beside
# the merged tree for hooks on the build machine, in the chroot's copy of it otherwise.
HOST_DETAIL = "hook-failure"
CHROOT_DETAIL = f"{environment.IN_TARGET_HOOKS}/.hook-failure"
# After these phases, whatever hooks mounted inside the image is unmounted.
RELEASE_AFTER = frozenset({Phase.POST_ROOT, Phase.CLEANUP})


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
    args: Tuple[str, ...] = ()  # the command line as given (DIB_ARGS)
    install_type: Optional[str] = None  # --install-type (DIB_DEFAULT_INSTALLTYPE)


@dataclass
class BuildResult:
    elements: List[str]
    images: List[Path]
    seconds: float
    phase_seconds: Dict[str, float] = field(default_factory=dict)
    tree_cache: str = ""  # what the installed-tree cache did: hit, stored, off, ...


def _mem_available() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _remove_workdir(work: Path) -> None:
    chroot.release_all(work)  # refuses (raises) rather than delete through a live mount
    shutil.rmtree(work, ignore_errors=True)


def _note_free_space(work: Path) -> Callable[..., bool]:
    """An exit callback noting the build dir (and its free space) on a failure, before
    clean-up."""

    def on_exit(exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        if exc is not None:
            failure.note(exc, free_bytes={"build": failure.free_bytes(work)}, build_dir=str(work))
        return False

    return on_exit


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
        ignored = self.tree.ignored(phase)
        if ignored:
            LOG.info(
                "%s: not running %s (dib-run-parts runs only names of letters, digits, "
                "'_' and '-')",
                phase.dirname,
                ", ".join(ignored),
            )
        stops = {f"before-{phase.label}", f"after-{phase.label}"} & self.breaks
        if not scripts and not stops:
            return
        watch = Stopwatch()
        LOG.info("---- phase %s: %d script(s)", phase.dirname, len(scripts))
        with failure.noting(phase=phase.dirname):
            self._run_scripts(phase, scripts)
        self.phase_seconds[phase.label] = round(watch.seconds, 2)

    def release_element_mounts(self, phase: Phase) -> None:
        """Unmount what hooks mounted inside the image (pip-cache binds its cache into
        the image's /tmp in root.d), as disk-image-create unmounts the image after
        post-root.d and the image's /tmp after cleanup.d."""
        root = Path(os.path.realpath(self.root))
        points = [p for p in chroot.mounts_under(root) if p != root]
        if not points:
            return
        LOG.info("after %s: unmounting %s", phase.dirname, ", ".join(map(str, points)))
        for point in points:
            chroot.release_all(point)

    def tidy_image(self) -> None:
        """After cleanup.d, as disk-image-create finishes the image: the image's /tmp
        emptied, its /var/log files truncated, /root's *.log files removed."""
        tmp = self.root / "tmp"
        if tmp.is_dir() and not tmp.is_symlink():
            for entry in tmp.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for top, truncate in ((self.root / "var" / "log", True), (self.root / "root", False)):
            if top.is_symlink() or not top.is_dir():
                continue
            for directory, _, files in os.walk(top):
                for name in files:
                    path = Path(directory, name)
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    if truncate:
                        os.truncate(path, 0)
                    elif name.endswith(".log"):
                        path.unlink()

    def _run_scripts(self, phase: Phase, scripts: List[Path]) -> None:
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
        detail = self.tree.root.parent / HOST_DETAIL
        env[failure.HOOK_DETAIL_VAR] = str(detail)
        self._run_hook(phase, script, [str(runner), str(script), *env_files], env, detail)

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
        env[failure.HOOK_DETAIL_VAR] = CHROOT_DETAIL
        detail = self.root / CHROOT_DETAIL.lstrip("/")
        self._run_hook(phase, script, cmd, env, detail)

    def _run_hook(
        self, phase: Phase, script: Path, cmd: List[str], env: Dict[str, str], detail: Path
    ) -> None:
        """Run one hook; ``detail`` is where (on this machine) it may explain its failure."""
        tag = f"{phase.dirname}/{script.name}"
        origin = self.tree.origin(script)
        where = {
            "phase": phase.dirname,
            "hook": script.name,
            "element": origin.element,
            "command": str(origin.source),
        }
        watch = Stopwatch()
        LOG.info("running %s", tag)
        with contextlib.suppress(FileNotFoundError):
            detail.unlink()
        try:
            with failure.noting(**where):
                run(cmd, tag=tag, env=env)
        except CommandFailed as err:
            raise self._hook_failure(tag, where, err, failure.read_hook_detail(detail)) from None
        LOG.info("finished %s in %.1f s", tag, watch.seconds)

    def _hook_failure(
        self, tag: str, where: Mapping[str, Any], err: CommandFailed, detail: Mapping[str, Any]
    ) -> DibError:
        """The error for a failed hook: as the hook's own process explained it, if it did."""
        if "environment" in detail:
            return self._environment_failure(tag, err, Path(detail["environment"]))
        cause = next((line.strip() for line in reversed(err.tail) if line.strip()), "")
        message = f"{tag} failed with exit code {err.returncode}"
        known = {
            **where,
            "kind": HOOK_KINDS.get((where["element"], where["phase"]), "hook"),
            "status": err.returncode,
            "error": failure.pick_error_line(err.tail),
            **detail,  # the failing command inside the hook, as the hook's process saw it
        }
        return failure.note(DibError(f"{message}: {cause}" if cause else message), **known)

    def _environment_failure(self, tag: str, err: CommandFailed, env_file: Path) -> DibError:
        """An environment.d file failed in the runner before ``tag`` could start."""
        merged = self.tree.root / environment.ENVIRONMENT_DIR / env_file.name
        return environment.environment_failure(
            merged, self.tree.origin, err.returncode, err.tail, f" before {tag}"
        )


class TreeCacheUse:
    """What one build does with the installed-tree cache: restore, store, or neither."""

    def __init__(self, cache: Optional[treecache.TreeCache], outcome: str):
        self.cache = cache
        self.outcome = outcome
        self.restored: FrozenSet[Phase] = frozenset()
        self.restore_seconds = 0.0

    @classmethod
    def open(cls, opts: BuildOptions, resolution: Resolution, env: Mapping[str, str],
             build_paths: List[str], breaks: FrozenSet[str]) -> TreeCacheUse:
        cache, why = treecache.for_build(opts.image_cache, resolution.elements, env,
                                         opts.packages, build_paths, sorted(breaks))
        if cache is None:
            LOG.info("tree cache: off: %s", why)
            return cls(None, f"off: {why}")
        return cls(cache, "")

    def restore(self, root: Path) -> bool:
        """Fill ``root`` from the cache on a hit; False on a miss (every phase runs)."""
        if self.cache is None:
            return False
        hit, why = self.cache.lookup()
        if not hit:
            self.outcome = f"miss {self.cache.short}: {why}"
            LOG.info("tree cache: %s", self.outcome)
            return False
        watch = Stopwatch()
        with failure.noting(phase="tree-cache"):
            self.cache.restore(root)
        self.restored = frozenset(CACHED_PHASES)
        self.restore_seconds = round(watch.seconds, 2)
        phases = " ".join(p.dirname for p in CACHED_PHASES)
        note = f"; {why}" if why else ""
        self.outcome = (f"hit {self.cache.short} ({phases} from the cache, restored in "
                        f"{self.restore_seconds:.1f} s{note})")
        LOG.info("tree cache: %s", self.outcome)
        return True

    def store(self, root: Path, elements: List[str]) -> None:
        if self.cache is None or self.restored:
            return
        self.outcome = self.cache.store(root, elements)
        LOG.info("tree cache: %s", self.outcome)


def build_environment(
    opts: BuildOptions,
    resolution: Resolution,
    work: Path,
    root: Path,
    tree: HookTree,
    base: Mapping[str, str],
) -> Dict[str, str]:
    env = environment.curated(base)
    # As disk-image-create: DIB_ARGS, and DIB_ENV recording the caller's DIB_* settings
    # (with DIB_ARGS) before anything of the build's own.
    args = " ".join(opts.args)
    callers = {k: v for k, v in env.items() if k.startswith("DIB_")}
    elements = {e.name: os.path.abspath(e.path) for e in resolution.elements}
    env.update(
        {
            "DIB_ARGS": args,
            "DIB_ENV": environment.declare_dump({**callers, "DIB_ARGS": args}),
            "DIB_DEFAULT_INSTALLTYPE": opts.install_type
            or env.get("DIB_DEFAULT_INSTALLTYPE")
            or "source",
            "DIB_PYTHON_EXEC": env.get("DIB_PYTHON_EXEC") or environment.python_exec(tree.root),
            "IMAGE_ELEMENT_YAML": yaml.safe_dump(elements),
            environment.ELEMENT_ARRAY_VAR: environment.element_array(elements),
            "_LIB": str(environment.LIB_DIR),
            # As disk-image-create: with the bundled elements last, for helpers that look
            # elements up themselves (package-installs-squash reads each one's yaml).
            "ELEMENTS_PATH": ":".join(str(p) for p in elements_path(env)),
        }
    )
    env.update(
        {
            "ARCH": normalise_arch(opts.arch),
            # As disk-image-create: the -o path (elements write ${IMAGE_NAME}.d/, .vmlinuz, ...)
            "IMAGE_NAME": str(opts.output),
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
    # A foreign architecture runs its programs through a binfmt handler: none, no build.
    with failure.noting(kind="config"):
        arches.require(opts.arch, env=base_env)
    command_line = with_block_device_default(opts.elements, normalise_arch(opts.arch))
    requested = command_line if opts.skip_base else ["base", *command_line]
    resolution = resolve_from_env(requested, base_env)
    breaks = breakpoints.parse(base_env)  # a bad value fails before any work
    LOG.info("elements: %s", " ".join(resolution.names))
    opts.image_cache.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = make_workdir(stack, opts.tmpfs)
        stack.push(_note_free_space(work))
        tree = merge_elements(resolution.elements, work / "hooks")
        environment.write_runner(tree.root)
        root = work / "mnt"
        root.mkdir()
        env = build_environment(opts, resolution, work, root, tree, base_env)
        sourced = environment.sourced_environment(env, tree.environment_files(), tree.origin)
        distro = Distro(sourced.get("DISTRO_NAME", ""), sourced.get("DIB_RELEASE", ""))
        compression = outputs.qcow2_compression(sourced, opts.compress)  # bad value: fail now
        final_image = outputs.wants_final_image(resolution.names)
        disk = disk_stage.prepare(
            sourced,
            [e.path for e in resolution.elements],
            normalise_arch(opts.arch),
            work,
            bundled_elements_dir(),
            disk_output=final_image and outputs.has_disk_type(opts.types),
        )
        if disk is not None:
            env.update(disk.environment())
            disk.install_shims(tree.root)
        plan = plan_packages(resolution.elements, distro, opts.arch, sourced, opts.packages)
        write_plan(plan, tree.root / "package-installs")
        write_pkg_maps(resolution.elements, distro, tree.root / "package-installs" / "pkg-map")
        builder = Builder(opts, resolution, tree, root, env, breaks)
        cached = TreeCacheUse.open(opts, resolution, env, [str(work), os.path.abspath(opts.output)],
                                   breaks)
        try:
            if cached.restore(root):
                builder.phase_seconds["tree-cache"] = cached.restore_seconds
            for phase in Phase:
                if phase in cached.restored:
                    continue
                builder.run_phase(phase)
                if disk is not None:
                    with failure.noting(phase=phase.dirname):
                        disk.after_phase(phase, root)
                if phase in RELEASE_AFTER:
                    with failure.noting(phase=phase.dirname):
                        builder.release_element_mounts(phase)
                if phase is CACHED_PHASES[-1]:
                    cached.store(root, resolution.names)
                if phase is Phase.CLEANUP:
                    builder.tidy_image()
        except DibError:
            if breakpoints.AFTER_ERROR in breaks:
                breakpoints.stop_here(breakpoints.AFTER_ERROR, builder.host_env(), cwd=root)
            raise
        if chroot.mounts_under(root):
            raise DibError(f"something is still mounted under {root}; refusing to package it")
        with failure.noting(kind="output"):
            images = outputs.make_outputs(
                root,
                opts.output,
                opts.types,
                work,
                opts.image_size,
                opts.checksum,
                compression,
                final_image=final_image,
            )
    for image in images:
        LOG.info("wrote %s (%d MiB)", image, image.stat().st_size >> 20)
    return BuildResult(resolution.names, images, round(watch.seconds, 2), builder.phase_seconds,
                       cached.outcome)


__all__ = ["BuildOptions", "BuildResult", "build", "run"]
