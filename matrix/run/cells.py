"""What each kind of cell does: hostgen, the tox check, a dib build, a boot test.

``CellRunner.execute`` is the per-cell boundary: whatever goes wrong inside
becomes a ``CellReport`` (``error`` for the engine, ``failed`` for the build),
never an exception that sinks the run. Cells report evidence, never categories:
the verdict stage (``matrix.verdict.classify``) names causes.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from dib import failure
from dib.boottest import BootOptions, BootTestError, run_boot_test
from matrix.config.matrixfile import Network
from matrix.containers import engine
from matrix.hostgen.build import build_host
from matrix.hostgen.diblayer import DibLayerError, LayerBaker
from matrix.hostgen.facts import HostFacts
from matrix.run.cellreport import CellReport
from matrix.run.plan import PlannedCell, preflight
from matrix.run.reuse import KeyMaker, Reusable, link_or_copy
from matrix.verdict.verify import expectation_for, summary, verify_images
from results.model import Artifact, CellKind, State

LOG = logging.getLogger("dib-matrix")
TOX_SCRIPT = f"{engine.DIB_MOUNT}/matrix/run/incontainer/tox-check.sh"


@dataclass
class RunContext:
    """Run-time state shared by the cells of one run (kept apart from the config)."""

    run_id: str
    run_dir: Path
    dib_tree: Path
    client: docker.DockerClient
    mirror: str | None
    timeout: float
    hostgen_timeout: float
    boot_timeout: float = 600.0
    network: Network = Network.HOST
    rebuild_hosts: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    facts: dict[str, HostFacts] = field(default_factory=dict)
    host_images: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: KeyMaker | None = None
    reusable: dict[str, Reusable] | None = None  # earlier cells by key, with --reuse
    image_ids: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the package cache proxy
    layers: LayerBaker | None = None  # None: bind-mount dib_tree into cells (--dib-mount)
    cell_images: dict[str, str] = field(default_factory=dict)  # host -> its dib layer
    # diskimage-builder version -> its element tree on this machine (runner.prepare_upstream)
    upstream_elements: dict[str, Path] = field(default_factory=dict)
    security_mirror: str | None = None  # for upstream's debian-minimal (its own default
    # is a public host); the machine's debian-security archive, like ``mirror``
    # How a cell's container runs: engine.run_cell (local) or swarm.run_cell (a job).
    run_cell: Callable[[docker.DockerClient, engine.CellSpec], engine.CellResult] = \
        engine.run_cell

    def image_id(self, host: str) -> str:
        with self.lock:
            if host not in self.image_ids:
                self.image_ids[host] = self.client.images.get(self.host_images[host]).id
            return self.image_ids[host]

    def log_path(self, cell: PlannedCell) -> Path:
        return self.run_dir / "logs" / cell.host.name / f"{cell.row.replace(':', '-')}.log"

    def images_dir(self, host: str) -> Path:
        return self.run_dir / "images" / host

    def elements_dirs(self, cell: PlannedCell) -> list[Path]:
        """Where the cell's dib finds elements, on this machine: upstream's tree first
        for a target with ``diskimage-builder-elements``, then dib's."""
        version = cell.target.upstream_elements if cell.target else None
        first = [self.upstream_elements[version]] if version in self.upstream_elements else []
        return [*first, self.dib_tree / "elements"]


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
        except (engine.EngineError, docker.errors.DockerException) as err:
            return _engine_error(log, str(err))
        except Exception as err:  # noqa: BLE001 - the per-cell boundary
            _write(log, "engine error: internal: " + "".join(traceback.format_exception(err)))
            return CellReport(State.ERROR, (f"engine error: internal: {err!r}",), log=log,
                              hint="engine-error")

    def _hostgen(self, cell: PlannedCell, log: Path) -> CellReport:
        outcome = build_host(self.ctx.client, cell.host, log, rebuild=self.ctx.rebuild_hosts,
                             mirror=self.ctx.mirror, run_id=self.ctx.run_id,
                             proxy_env=self.ctx.extra_env, timeout=self.ctx.hostgen_timeout)
        with self.ctx.lock:
            self.ctx.host_images[cell.host.name] = outcome.image
            if outcome.facts is not None:
                self.ctx.facts[cell.host.name] = outcome.facts
        if not log.exists():  # cached: the build log is from an earlier run
            _write(log, f"{outcome.one_line()}\n")
        if not outcome.ok:
            return CellReport(State.FAILED, (outcome.evidence,) if outcome.evidence else (),
                              log=log, hint=outcome.hint)
        if self.ctx.layers is not None:
            try:
                with log.open("ab") as stream:
                    layer = self.ctx.layers.bake(self.ctx.client, cell.host.name,
                                                 outcome.image, stream)
            except DibLayerError as err:
                return _engine_error(log, str(err))
            _write(log, layer.one_line())
            with self.ctx.lock:
                self.ctx.cell_images[cell.host.name] = layer.reference
        return CellReport(State.SUCCESS, reason=outcome.status.value, log=log)

    def _in_container(self, cell: PlannedCell, log: Path) -> CellReport:
        verdict = preflight(cell, self.ctx.facts.get(cell.host.name))
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
            with self.ctx.lock:
                self.ctx.cell_images[cell.host.name] = layer
        spec = self.spec(cell)
        if cell.kind is CellKind.BUILD:
            forget_failure_record(self.ctx, cell)
        result = self.ctx.run_cell(self.ctx.client, spec)
        # The reproducer leaves out this run's loopback package cache: it is gone by then.
        by_hand = dataclasses.replace(spec, environment={
            k: v for k, v in spec.environment.items() if k not in self.ctx.extra_env})
        report = CellReport(State.SUCCESS, log=log, reproducer=reproducer(by_hand), key=key)
        if self.ctx.stop.is_set() and not result.ok:
            return report.replace(state=State.SKIPPED, reason="cancelled")
        if result.timed_out:
            line = f"cell timed out after {spec.timeout:.0f} s"
            _write(log, line)
            return report.replace(state=State.TIMEOUT, evidence=(line,), hint="timeout")
        if cell.kind is not CellKind.BUILD:
            return report if result.ok else report.replace(state=State.FAILED)
        report = report.replace(artifacts=tuple(collect_artifacts(self.ctx, cell)))
        if not result.ok:
            return report.replace(state=State.FAILED, record=read_failure_record(self.ctx, cell),
                                  free_bytes={"output": failure.free_bytes(
                                      self.ctx.images_dir(cell.host.name))})
        return verify_build(self.ctx, cell, report)

    def _reuse(self, earlier: Reusable, log: Path, key: str) -> CellReport:
        """Take an earlier run's result for the same key: artifacts hard-linked, log copied."""
        old = earlier.cell
        for artifact in old.artifacts:
            for source in _artifact_files(earlier.run_dir / artifact.path):
                link_or_copy(source, self.ctx.run_dir / source.relative_to(earlier.run_dir))
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

    def spec(self, cell: PlannedCell) -> engine.CellSpec:
        env = dict(cell.env)
        upstream = self.upstream_elements(cell)
        if upstream is not None:
            # That release's whole tree first; a target's own ELEMENTS_PATH after it, dib's
            # bundled elements last (dib appends them).
            env["ELEMENTS_PATH"] = ":".join(filter(None, (engine.UPSTREAM_ELEMENTS_MOUNT,
                                                          env.get("ELEMENTS_PATH"))))
            if self.ctx.security_mirror:
                env.setdefault("DIB_DEBIAN_SECURITY_MIRROR", self.ctx.security_mirror)
        if cell.kind is CellKind.CHECK:
            command: tuple[str, ...] = ("bash", TOX_SCRIPT)
        else:
            assert cell.target is not None
            command = engine.dib_command(cell.target.elements, cell.target.name,
                                         cell.target.outputs, ("--checksum", "-a",
                                                               cell.target.arch))
        return engine.CellSpec(
            run_id=self.ctx.run_id,
            cell_id=cell.id,
            host=cell.host.name,
            image=self.cell_image(cell.host.name),
            command=command,
            log_path=self.ctx.log_path(cell),
            timeout=self.ctx.timeout,
            environment={**engine.dib_environment(env, self.ctx.mirror), **self.ctx.extra_env},
            dib_tree=self.ctx.dib_tree if self.ctx.layers is None else None,
            out_dir=self.ctx.images_dir(cell.host.name) if cell.kind is CellKind.BUILD else None,
            cache_volume=engine.cache_volume_name(cell.host.name),
            network=self.ctx.network,
            upstream_elements=upstream,
        )

    def upstream_elements(self, cell: PlannedCell) -> Path | None:
        """The diskimage-builder element tree to mount for ``cell``, or None."""
        version = cell.target.upstream_elements if cell.target else None
        if not version or cell.kind is not CellKind.BUILD:
            return None
        if version not in self.ctx.upstream_elements:
            raise engine.EngineError(f"diskimage-builder {version} elements were not prepared")
        return self.ctx.upstream_elements[version]

    def cell_image(self, host: str) -> str:
        """The host's dib layer, or its host image when the tree is bind-mounted."""
        if self.ctx.layers is None:
            return self.ctx.host_images[host]
        with self.ctx.lock:
            if host not in self.ctx.cell_images:
                raise engine.EngineError(f"no dib layer for host {host} (its hostgen did not "
                                         "finish)")
            return self.ctx.cell_images[host]

    def _boot(self, cell: PlannedCell, log: Path) -> CellReport:
        """Boot the build cell's image under qemu on this machine (same firmware for every
        host, so boot verdicts compare across hosts); the image is never modified."""
        assert cell.target is not None
        image = boot_image(self.ctx, cell)
        if image is None:
            line = "boot: the build produced no qcow2 or raw image to boot"
            _write(log, line)
            return CellReport(State.FAILED, (line,), log=log)
        key = self.ctx.keys.key(cell, self.ctx.image_id(cell.host.name)) if self.ctx.keys else None
        if key and self.ctx.reusable and key in self.ctx.reusable:
            return self._reuse(self.ctx.reusable[key], log, key)
        opts = BootOptions(image=image, serial_log=log, timeout=self.ctx.boot_timeout,
                           uefi="block-device-efi" in cell.target.elements)
        command = shlex.join([sys.executable, "-m", "dib.boottest", *opts.to_argv()])
        report = CellReport(State.SUCCESS, log=log, reproducer=command, key=key)
        try:
            result = run_boot_test(opts)
        except BootTestError as err:
            line = f"boot: qemu failed: {err}"
            _write(log, line)
            return report.replace(state=State.ERROR, evidence=(line,), hint="qemu-error")
        if result.passed:
            return report.replace(reason=f"marker after {result.seconds_to_marker:.0f} s")
        state = State.ERROR if result.infrastructure else State.FAILED
        return report.replace(state=state, evidence=(result.evidence,),
                              hint="qemu-error" if result.infrastructure else None)


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


def verify_build(ctx: RunContext, cell: PlannedCell, report: CellReport) -> CellReport:
    """A build is ``success`` only once its images pass their checks."""
    assert cell.target is not None
    images = [ctx.run_dir / a.path for a in report.artifacts]
    expect = expectation_for(cell.target, dict(cell.env), ctx.elements_dirs(cell))
    checks = tuple(verify_images(images, expect, ctx.run_dir, timeout=ctx.timeout))
    log = ctx.log_path(cell)
    for check in checks:
        _write(log, f"image check {check.name}: {'ok' if check.ok else 'FAILED'}: "
               f"{check.detail}" + (f" ({check.image})" if check.image else ""))
    failed = summary(list(checks))
    if failed is None:
        return report.replace(checks=checks)
    _write(log, failed)
    return report.replace(state=State.FAILED, checks=checks, evidence=(failed,))


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
        found.append(Artifact(str(path.relative_to(ctx.run_dir)), image_type,
                              path.stat().st_size, digest))
    return found


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
