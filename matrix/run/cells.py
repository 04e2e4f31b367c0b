"""What each kind of cell does: hostgen, the tox check, a dib build, a boot test.

``CellRunner.execute`` is the per-cell boundary: whatever goes wrong inside
becomes a ``CellReport`` (``error`` for the engine, ``failed`` for the build),
never an exception that sinks the run. Cells report evidence, never categories:
the verdict stage (``matrix.verdict.classify``) names causes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shlex
import shutil
import sys
import traceback
from pathlib import Path

import docker
import requests.exceptions

from dib import failure
from dib.arch import normalise as normalise_arch
from dib.bootconsole import CheckStatus, WatchSettings
from dib.bootqemu import BootOptions, BootTestError, mirror_host
from dib.boottest import BootResult, run_boot_test
from dib.elements import index_elements, resolve
from dib.errors import DibError
from matrix.config.hosts import BUNDLED_HOSTS_DIR
from matrix.config.registryname import RegistryError
from matrix.containers import engine
from matrix.containers.placement import NodeLost
from matrix.hostgen.build import build_host
from matrix.hostgen.diblayer import DibLayerError
from matrix.run.cellreport import CellReport
from matrix.run.context import RunContext
from matrix.run.incontainer.upload_results import UPLOAD_FAILED_EXIT
from matrix.run.plan import PlannedCell, preflight
from matrix.run.reuse import Reusable, link_or_copy
from matrix.verdict.verify import Deadline, expectation_for, summary, verify_images
from results.model import BOOT_CHECK_PREFIX, SKIPPED_PREFIX, Artifact, CellKind, ImageCheck, State

LOG = logging.getLogger("dib-matrix")
TOX_SCRIPT = f"{engine.DIB_MOUNT}/matrix/run/incontainer/tox-check.sh"
BUILD_HOST_VAR = "DIB_BUILD_HOST_IMAGE"  # the host image a build cell runs on


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        log.write(text if text.endswith("\n") else text + "\n")


class CellRunner:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def execute(self, cell: PlannedCell, attempt: int) -> CellReport:
        log = self.ctx.log_path(cell)
        if attempt > 1:
            _write(log, f"\n# dib-matrix: attempt {attempt}\n")
        try:
            if cell.kind is CellKind.HOSTGEN:
                return self._hostgen(cell, log)
            if cell.kind is CellKind.BOOT:
                return self._boot(cell, log)
            return self._in_container(cell, log)
        except NodeLost as lost:  # no verdict: a resumed run runs the cell again
            return CellReport(State.PENDING, (str(lost),), reason=str(lost), log=log)
        except (engine.EngineError, docker.errors.DockerException) as err:
            return _engine_error(log, str(err))
        except requests.exceptions.ConnectionError as err:  # the engine's socket went away
            return _engine_error(log, f"the container engine stopped answering: {err}")
        except Exception as err:  # noqa: BLE001 - the per-cell boundary
            _write(log, "engine error: internal: " + "".join(traceback.format_exception(err)))
            return CellReport(State.ERROR, (f"engine error: internal: {err!r}",), log=log,
                              hint="engine-error")

    def _hostgen(self, cell: PlannedCell, log: Path) -> CellReport:
        settings = self.ctx.settings
        outcome = build_host(self.ctx.client, cell.host, log, rebuild=settings.rebuild_hosts,
                             mirror=settings.mirror, run_id=settings.run_id,
                             proxy_env=dict(settings.proxy_env(cell.id)),
                             timeout=settings.config.hostgen_timeout)
        self.ctx.hosts.built(cell.host.name, outcome.image, outcome.facts)
        if not log.exists():  # cached: the build log is from an earlier run
            _write(log, f"{outcome.one_line()}\n")
        if not outcome.ok:
            return CellReport(State.FAILED, (outcome.evidence,) if outcome.evidence else (),
                              log=log, hint=outcome.hint, reproducer=hostgen_reproducer(cell))
        if self.ctx.layers is not None:
            try:
                with log.open("ab") as stream:
                    layer = self.ctx.layers.bake(self.ctx.client, cell.host.name,
                                                 outcome.image, stream)
            except DibLayerError as err:
                return _engine_error(log, str(err))
            _write(log, layer.one_line())
            self.ctx.hosts.baked(cell.host.name, layer.reference)
        return CellReport(State.SUCCESS, reason=outcome.status.value, log=log,
                          reproducer=hostgen_reproducer(cell))

    def _in_container(self, cell: PlannedCell, log: Path) -> CellReport:
        verdict = preflight(cell, self.ctx.hosts.facts(cell.host.name))
        if verdict is not None:
            _write(log, f"preflight: {verdict}")
            return CellReport(State.FAILED, (verdict,), log=log)
        key = self.ctx.keys.key(cell, self.ctx.image_id(cell.host.name)) if self.ctx.keys else None
        if key and self.ctx.reusable and key in self.ctx.reusable:
            return self._reuse(self.ctx.reusable[key], log, key)
        if self.ctx.layers is not None:
            try:  # the host's layer, baked again if something removed it since hostgen
                with log.open("ab") as stream:
                    layer = self.ctx.layers.ensure(self.ctx.client, cell.host.name, stream)
            except DibLayerError as err:
                return _engine_error(log, str(err))
            self.ctx.hosts.baked(cell.host.name, layer)
        spec = self.spec(cell)
        if cell.kind is CellKind.BUILD:
            forget_failure_record(self.ctx, cell)
        # One budget for the cell: its container, then the checks of its images.
        budget = Deadline.after(spec.timeout)
        try:
            result = self.ctx.run_cell(self.ctx.client, self.on_nodes(cell, spec, log))
        except RegistryError as err:
            return _engine_error(log, str(err))
        # The reproducer leaves out this run's loopback package cache: it is gone by then.
        by_hand = dataclasses.replace(spec, environment={
            k: v for k, v in spec.environment.items()
            if k not in self.ctx.settings.proxy_env(cell.id)})
        report = CellReport(State.SUCCESS, log=log, reproducer=reproducer(by_hand), key=key,
                            node=result.node)
        if result.exit_code == UPLOAD_FAILED_EXIT and self.ctx.cluster is not None:
            return _engine_error(log, "the cell's outputs did not reach the run (upload "
                                 "failed; its log says why)").replace(node=result.node)
        if self.ctx.stop.is_set() and not result.ok:
            return report.replace(state=State.SKIPPED, reason="cancelled")
        if result.timed_out:
            return timed_out(log, report, spec.timeout)
        if cell.kind is not CellKind.BUILD:
            return report if result.ok else report.replace(state=State.FAILED)
        report = report.replace(artifacts=tuple(collect_artifacts(self.ctx, cell)))
        if not result.ok:
            return report.replace(state=State.FAILED, record=read_failure_record(self.ctx, cell),
                                  free_bytes={"output": failure.free_bytes(
                                      self.ctx.images_dir(cell.host.name))})
        return verify_build(self.ctx, cell, report, budget)

    def _reuse(self, earlier: Reusable, log: Path, key: str) -> CellReport:
        """Take an earlier run's result for the same key: artifacts hard-linked, log copied."""
        old = earlier.cell
        for artifact in old.artifacts:
            for source in _artifact_files(earlier.run_dir / artifact.path):
                link_or_copy(source,
                             self.ctx.settings.run_dir / source.relative_to(earlier.run_dir))
        _write(log, f"# dib-matrix: reused from run {earlier.run_dir.name} (key {key[:16]})")
        if old.log and (earlier.run_dir / old.log).is_file():
            with (earlier.run_dir / old.log).open("rb") as source, log.open("ab") as copy:
                shutil.copyfileobj(source, copy)
        # The earlier verdict stands (its cause too); voting is this run's to decide.
        state = State.FAILED if old.state is State.ALLOWED_FAILURE else old.state
        return CellReport(state, reason=f"reused from {earlier.run_dir.name}", log=log,
                          key=key, reused=True, artifacts=tuple(old.artifacts),
                          checks=tuple(old.checks), reproducer=old.reproducer,
                          category=old.category, verdict=old.evidence)

    def on_nodes(self, cell: PlannedCell, spec: engine.CellSpec, log: Path) -> engine.CellSpec:
        """``spec`` for a multi-node swarm: the image pushed and pinned, the outputs sent
        back (unchanged for one machine)."""
        cluster = self.ctx.cluster
        if cluster is None:
            return spec
        with log.open("ab") as stream:
            image = cluster.layer(self.ctx.client, cell.host.name, spec.image, stream)
        return cluster.for_nodes(dataclasses.replace(spec, image=image))

    def spec(self, cell: PlannedCell) -> engine.CellSpec:
        env = dict(cell.env)
        upstream = self.upstream_elements(cell)
        if upstream is not None:
            # That release's whole tree first; a target's own ELEMENTS_PATH after it, dib's
            # bundled elements last (dib appends them).
            env["ELEMENTS_PATH"] = ":".join(filter(None, (engine.UPSTREAM_ELEMENTS_MOUNT,
                                                          env.get("ELEMENTS_PATH"))))
            if self.ctx.settings.security_mirror:
                env.setdefault("DIB_DEBIAN_SECURITY_MIRROR", self.ctx.settings.security_mirror)
        record = self.ctx.hosts.get(cell.host.name)
        if cell.kind is CellKind.BUILD and record is not None:
            # dib keys its installed-tree cache by every DIB_ setting: a tree one host image
            # installed is not reused by a cell of a changed host.
            env[BUILD_HOST_VAR] = record.image
        if cell.kind is CellKind.CHECK:
            command: tuple[str, ...] = ("bash", TOX_SCRIPT)
        else:
            assert cell.target is not None
            command = engine.dib_command(cell.target.elements, cell.target.name,
                                         cell.target.outputs, ("--checksum", "-a",
                                                               cell.target.arch))
        settings = self.ctx.settings
        return engine.CellSpec(
            run_id=settings.run_id,
            cell_id=cell.id,
            host=cell.host.name,
            image=self.cell_image(cell.host.name),
            command=command,
            log_path=self.ctx.log_path(cell),
            timeout=settings.config.timeout,
            environment={**engine.dib_environment(env, self.debian_mirror(cell, upstream)),
                         **settings.proxy_env(cell.id)},
            dib_tree=settings.dib_tree.path if self.ctx.layers is None else None,
            out_dir=self.ctx.images_dir(cell.host.name) if cell.kind is CellKind.BUILD else None,
            cache_volume=engine.cache_volume_name(cell.host.name),
            network=settings.config.network,
            upstream_elements=upstream,
        )

    def debian_mirror(self, cell: PlannedCell, upstream: Path | None) -> str | None:
        """The machine's Debian mirror for a cell whose target debootstraps (and for the
        tox row); an RPM target's repositories come from its own variables."""
        if cell.target is None:
            return self.ctx.settings.mirror
        trees = (upstream,) if upstream is not None else ()
        trees += (self.ctx.settings.dib_tree.elements,)
        return self.ctx.settings.mirror if debootstraps(cell.target.elements, trees) else None

    def upstream_elements(self, cell: PlannedCell) -> Path | None:
        """The diskimage-builder element tree to mount for ``cell``, or None."""
        version = cell.target.upstream_elements if cell.target else None
        if not version or cell.kind is not CellKind.BUILD:
            return None
        trees = self.ctx.settings.upstream_elements
        if version not in trees:
            raise engine.EngineError(f"diskimage-builder {version} elements were not prepared")
        return trees[version]

    def cell_image(self, host: str) -> str:
        """The host's dib layer, or its host image when the tree is bind-mounted."""
        record = self.ctx.hosts.get(host)
        if self.ctx.layers is None and record is not None:
            return record.image
        if record is None or record.layer is None:
            raise engine.EngineError(f"no dib layer for host {host} (its hostgen did not "
                                     "finish)")
        return record.layer

    def _boot(self, cell: PlannedCell, log: Path) -> CellReport:
        """Boot the build cell's image under qemu on this machine (same firmware for every
        host, so boot verdicts compare across hosts), then judge the checks of the running
        system the image's boot-checks element reports; the image is never modified."""
        assert cell.target is not None
        image = boot_image(self.ctx, cell)
        if image is None:
            line = "boot: the build produced no qcow2 or raw image to boot"
            _write(log, line)
            return CellReport(State.FAILED, (line,), log=log)
        key = self.ctx.keys.key(cell, self.ctx.image_id(cell.host.name)) if self.ctx.keys else None
        if key and self.ctx.reusable and key in self.ctx.reusable:
            return self._reuse(self.ctx.reusable[key], log, key)
        # The image's own architecture picks qemu and its machine (arm64: aarch64 virt,
        # always UEFI), so every host's image meets the same emulated machine. The
        # overlay it boots lives in the run directory while it runs.
        opts = BootOptions(image=image, serial_log=log,
                           timeout=self.ctx.settings.config.boot_timeout,
                           uefi="block-device-efi" in cell.target.elements,
                           arch=normalise_arch(cell.target.arch),
                           watch=WatchSettings(checks=cell.target.boot_checks),
                           resolve=mirror_host(), work_dir=self.ctx.settings.run_dir)
        command = shlex.join([sys.executable, "-m", "dib.boottest", *opts.to_argv()])
        report = CellReport(State.SUCCESS, log=log, reproducer=command, key=key)
        try:
            result = run_boot_test(opts)
        except BootTestError as err:
            line = f"boot: qemu failed: {err}"
            _write(log, line)
            return report.replace(state=State.ERROR, evidence=(line,), hint="qemu-error")
        checks = boot_checks(result, image.relative_to(self.ctx.settings.run_dir)
                             if image.is_relative_to(self.ctx.settings.run_dir) else image)
        for check in result.checks:
            _write(log, f"boot check {check.name}: {check.status.value}: {check.detail}")
        report = report.replace(checks=checks)
        if result.passed:
            return report.replace(reason=boot_reason(result))
        state = State.ERROR if result.infrastructure else State.FAILED
        return report.replace(state=state, evidence=(result.evidence,),
                              hint="qemu-error" if result.infrastructure else None)


def boot_checks(result: BootResult, image: Path) -> tuple[ImageCheck, ...]:
    """The boot's checks of the running system as the cell's named checks: a skipped one
    is ok, its detail saying why it was skipped."""
    return tuple(
        ImageCheck(BOOT_CHECK_PREFIX + c.name, c.status is not CheckStatus.FAIL,
                   SKIPPED_PREFIX + c.detail if c.status is CheckStatus.SKIP else c.detail,
                   str(image))
        for c in result.checks)


def boot_reason(result: BootResult) -> str:
    """The success note: when the marker came, and how the checks went."""
    reason = f"marker after {result.seconds_to_marker:.0f} s"
    if not result.checks:
        return reason
    passed = sum(c.status is CheckStatus.PASS for c in result.checks)
    skipped = len(result.checks) - passed
    return reason + f"; checks: {passed} passed" + (f", {skipped} skipped" if skipped else "")


def _artifact_files(image: Path) -> list[Path]:
    """An image and what dib wrote beside it: checksum, package manifest, disk layout."""
    stem = image.with_suffix("")
    siblings = (image, Path(f"{image}.sha256"), stem.with_name(f"{stem.name}.packages"),
                Path(f"{image}.layout.json"), stem.with_name(f"{stem.name}.layout.json"))
    return [path for path in dict.fromkeys(siblings) if path.exists()]


def _engine_error(log: Path, message: str) -> CellReport:
    line = f"engine error: {message}"
    _write(log, line)
    return CellReport(State.ERROR, (line,), log=log, hint="engine-error")


RECORD_LIMIT = 64 << 10  # dib's failure record is a few hundred bytes; refuse a flood


def failure_record_path(ctx: RunContext, cell: PlannedCell) -> Path:
    """Where dib writes its failure record: beside the image, ``<output>.failure.json``."""
    assert cell.target is not None
    return failure.path_for(ctx.images_dir(cell.host.name) / cell.target.name)


def forget_failure_record(ctx: RunContext, cell: PlannedCell) -> None:
    """A record left by an earlier attempt must not explain this one."""
    failure_record_path(ctx, cell).unlink(missing_ok=True)


def read_failure_record(ctx: RunContext, cell: PlannedCell) -> dict | None:
    """dib's record of its own failure, or None (dib died before writing one). What the
    container wrote is untrusted: read at most RECORD_LIMIT bytes, fields bounded."""
    try:
        with failure_record_path(ctx, cell).open("rb") as stream:
            text = stream.read(RECORD_LIMIT).decode("utf-8", errors="replace")
        return failure.FailureRecord.from_json(text).bounded().to_dict()
    except (OSError, ValueError, TypeError):
        return None


def verify_build(ctx: RunContext, cell: PlannedCell, report: CellReport,
                 budget: Deadline) -> CellReport:
    """A build is ``success`` only once its images pass their checks, made in what is left
    of the cell's ``budget``: checks cut short by it make the cell a ``timeout``."""
    assert cell.target is not None
    images = [ctx.settings.run_dir / a.path for a in report.artifacts]
    expect = expectation_for(cell.target, dict(cell.env), ctx.elements_dirs(cell))
    checks = tuple(verify_images(images, expect, ctx.settings.run_dir, timeout=budget))
    log = ctx.log_path(cell)
    for check in checks:
        _write(log, f"image check {check.name}: {'ok' if check.ok else 'FAILED'}: "
               f"{check.detail}" + (f" ({check.image})" if check.image else ""))
    failed = summary(list(checks))
    if failed is None:
        return report.replace(checks=checks)
    if budget.passed:
        return timed_out(log, report.replace(checks=checks), budget.seconds,
                         "verifying its images")
    _write(log, failed)
    return report.replace(state=State.FAILED, checks=checks, evidence=(failed,))


def timed_out(log: Path, report: CellReport, seconds: float, doing: str = "") -> CellReport:
    """The cell ran out of its timeout (``doing`` what, when not its container)."""
    line = f"cell timed out after {seconds:.0f} s" + (f" ({doing})" if doing else "")
    _write(log, line)
    return report.replace(state=State.TIMEOUT, evidence=(line,), hint="timeout")


def boot_image(ctx: RunContext, cell: PlannedCell) -> Path | None:
    assert cell.target is not None
    for image_type in ("qcow2", "raw"):
        path = ctx.images_dir(cell.host.name) / f"{cell.target.name}.{image_type}"
        if image_type in cell.target.outputs and path.exists():
            return path
    return None


def collect_artifacts(ctx: RunContext, cell: PlannedCell) -> list[Artifact]:
    assert cell.target is not None
    found = []
    directory = ctx.images_dir(cell.host.name)
    for image_type in cell.target.outputs:
        path = directory / f"{cell.target.name}.{image_type}"
        if not path.exists():
            continue
        sums = path.with_name(path.name + ".sha256")
        digest = sums.read_text().split()[0] if sums.exists() else ""
        found.append(Artifact(str(path.relative_to(ctx.settings.run_dir)), image_type,
                              path.stat().st_size, digest))
    return found


def hostgen_reproducer(cell: PlannedCell) -> str:
    """The command that builds this host's image again by hand (its own file's directory
    when the host is not a bundled one)."""
    parts = ["dib-matrix", "hosts"]
    source = cell.host.source
    if source is not None and source.parent.resolve() != BUNDLED_HOSTS_DIR.resolve():
        parts += ["--hosts-dir", str(source.parent)]
    return shlex.join([*parts, "build", "--rebuild", cell.host.name])


@functools.lru_cache(maxsize=256)
def debootstraps(elements: tuple[str, ...], element_dirs: tuple[Path, ...]) -> bool:
    """Whether the build of ``elements`` uses debootstrap (resolved as the cell's dib will)."""
    try:
        resolution = resolve(["base", *elements], index_elements(list(element_dirs)))
    except DibError:  # the build reports that itself; its environment stays as it was
        return True
    return "debootstrap" in resolution.names


def reproducer(spec: engine.CellSpec) -> str:
    """The docker CLI command that runs this cell by hand, every part shell-quoted."""
    parts = ["docker", "run", "--rm", f"--network={spec.network.value}", "--cap-drop=ALL"]
    parts += [f"--cap-add={cap}" for cap in spec.capabilities]
    if spec.dib_tree is not None:
        parts += ["-v", f"{spec.dib_tree.resolve()}:{engine.DIB_MOUNT}:ro"]
    if spec.out_dir is not None:
        parts += ["-v", f"{spec.out_dir.resolve()}:{engine.OUT_MOUNT}"]
    if spec.cache_volume is not None:
        parts += ["-v", f"{spec.cache_volume}:{engine.CACHE_MOUNT}"]
    if spec.upstream_elements is not None:
        parts += ["-v", f"{spec.upstream_elements.resolve()}:{engine.UPSTREAM_ELEMENTS_MOUNT}:ro"]
    for key, value in sorted(spec.environment.items()):
        parts += ["-e", f"{key}={value}"]
    parts += [spec.image, *spec.command]
    return shlex.join(parts)
