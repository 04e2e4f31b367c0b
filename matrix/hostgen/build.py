"""hostgen: build (or find cached) the container image of one host definition.

Bootstrap hosts: debootstrap on this machine -> import -> Dockerfile build.
Image hosts: the same Dockerfile ``FROM`` the registry image. Then the facts
probe runs once in the new image and its result is stored as a label on the
final, content-tagged image. Every failure becomes a ``HostgenOutcome`` with one
clear evidence line and a hint (the catalogue id of the step that failed); the
verdict stage (``matrix.verdict.classify``) names the cause from them and the per-host log.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors

from dib.mirror import MirrorNotFound, find_mirror
from matrix.config.hosts import BootstrapBase, HostDefinition, ImageBase, RootfsBase
from matrix.config.registry import repo_digest
from matrix.containers.engine import run_captured
from matrix.containers.labels import (
    LABEL_DIGEST,
    LABEL_HOST,
    LABEL_ROLE,
    LABEL_RUN,
    LAST_GOOD_REPOSITORY_PREFIX,
)
from matrix.containers.leases import Registry, kept_line
from matrix.hostgen.facts import (
    FACTS_LABEL,
    FactsError,
    HostFacts,
    load_facts,
    parse_probe_output,
    probe_command,
    with_machine_binfmt,
)
from matrix.hostgen.hostimage import (
    HostImageNames,
    apt_sources,
    from_image,
    image_names,
    render_dockerfile,
)
from matrix.hostgen.imagebuild import BuildFailed, build_image, import_tarball
from matrix.hostgen.pull import PullFailed, pull
from matrix.hostgen.rootfs import (
    BOOTSTRAP_TIMEOUT,
    RootfsError,
    make_rootfs_tarball,
    new_work_dir,
    remove_tree,
)

LOG = logging.getLogger("dib-matrix")
PROBE_TIMEOUT = 300.0
BASE_DIGEST_LABEL = "org.dib-matrix.base-digest"  # on image hosts' host images


class HostgenStatus(str, enum.Enum):
    BUILT = "built"
    CACHED = "cached"
    FAILED = "failed"


@dataclass(frozen=True)
class HostgenOutcome:
    """What hostgen did for one host. ``message`` is one line; details are in the log."""

    host: str
    status: HostgenStatus
    image: str  # the content-tagged reference (built, cached or intended)
    duration: float
    log_path: Path | None
    facts: HostFacts | None = None
    hint: str | None = None  # catalogue id of the step that failed (the fallback cause)
    evidence: str = ""  # the one line that shows what failed
    # image hosts: the registry image it was built from, {"reference", "digest"}
    base_image: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status is not HostgenStatus.FAILED

    def one_line(self) -> str:
        if self.status is HostgenStatus.FAILED:
            return f"{self.host}: failed: {self.evidence}"
        return f"{self.host}: {self.status.value} {self.image} ({self.duration:.1f} s)"


# Catalogue ids of the hostgen steps (matrix/verdict/categories/default.yaml): what failed when
# the log names nothing more precise.
BASE_IMAGE_UNAVAILABLE = "base-image-unavailable"
MIRROR_NOT_CONFIGURED = "mirror-not-configured"
BOOTSTRAP_FAILED = "bootstrap-failed"
SETUP_FAILED = "setup-command-failed"
PROBE_FAILED = "facts-probe-failed"
BUILD_FAILED = "build-failed"
TIMEOUT = "timeout"
ENGINE_ERROR = "engine-error"


class _Failed(Exception):
    def __init__(self, hint: str, evidence: str) -> None:
        super().__init__(evidence)
        self.hint = hint
        self.evidence = evidence


def cached_outcome(client: docker.DockerClient, host: HostDefinition) -> HostgenOutcome | None:
    """The outcome for an already built, unchanged host; None if it must be built."""
    start = time.monotonic()
    names = image_names(host)
    facts = load_facts(client, names.image)
    if facts is None:
        return None
    return HostgenOutcome(
        host.name, HostgenStatus.CACHED, names.image, time.monotonic() - start, None, facts,
        base_image=recorded_base(client, host, names.image),
    )


def build_host(
    client: docker.DockerClient,
    host: HostDefinition,
    log_path: Path,
    *,
    rebuild: bool = False,
    mirror: str | None = None,
    work_dir: Path | None = None,
    run_id: str = "hostgen",
    proxy_env: Mapping[str, str] | None = None,
    timeout: float = BOOTSTRAP_TIMEOUT,
) -> HostgenOutcome:
    """Make sure ``host``'s image exists; build it unless cached (or ``rebuild``).

    ``mirror`` is the Debian mirror for bootstrap hosts whose definition names
    none (default: ``dib.mirror.find_mirror``). ``proxy_env`` (a run's shared
    package cache) routes debootstrap's and the Dockerfile's http downloads.
    ``timeout`` bounds the whole generation (bootstrap and image build).
    Never raises for a failed build: the outcome says why.
    """
    if not rebuild:
        cached = cached_outcome(client, host)
        if cached is not None:
            return cached
    start = time.monotonic()
    names = image_names(host)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        log.write(f"# hostgen {host.name} -> {names.image}\n".encode())
        job = _Job(client, host, names, log, rebuild, work_dir, run_id, dict(proxy_env or {}),
                   deadline=start + timeout)
        try:
            facts = _generate(job, mirror)
        except _Failed as exc:
            failed = exc
        except docker.errors.DockerException as exc:
            failed = _Failed(ENGINE_ERROR, f"engine error: {_engine_message(exc)}")
        else:
            duration = time.monotonic() - start
            return HostgenOutcome(
                host.name, HostgenStatus.BUILT, names.image, duration, log_path, facts,
                base_image=recorded_base(client, host, names.image),
            )
        log.write(f"\ndib-matrix: hostgen failed: {failed.evidence}\n".encode())
        # A failed build leaves its cached steps as untagged images; they
        # inherit the host label from the base, so they can be found.
        with suppress(docker.errors.DockerException):
            client.images.prune(filters={"dangling": True, "label": f"{LABEL_HOST}={host.name}"})
    return HostgenOutcome(
        host.name,
        HostgenStatus.FAILED,
        names.image,
        time.monotonic() - start,
        log_path,
        hint=failed.hint,
        evidence=failed.evidence,
    )


@dataclass(frozen=True)
class _Job:
    """One hostgen in progress."""

    client: docker.DockerClient
    host: HostDefinition
    names: HostImageNames
    log: BinaryIO
    rebuild: bool
    work_dir: Path | None
    run_id: str
    proxy_env: dict[str, str]
    deadline: float  # time.monotonic() by which the whole hostgen must be done

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def note(self, text: str) -> None:
        self.log.write(f"{text}\n".encode())
        self.log.flush()


def _generate(job: _Job, mirror: str | None) -> HostFacts:
    """base -> Dockerfile build (stage) -> facts probe -> labelled, tagged image."""
    replaced = _image_ids(job.client, (job.names.image, job.names.base))
    host = job.host
    sources_list = None
    if isinstance(host.base, BootstrapBase):
        mirror = _mirror_for(host.base, mirror)
        sources_list = apt_sources(host.base, mirror)
    base_digest = None
    if isinstance(host.base, ImageBase):
        base_digest = _ensure_registry_image(job, host.base.reference)
    else:
        _ensure_base(job, mirror)
    dockerfile = render_dockerfile(host, from_image(host, job.names), sources_list).encode()
    files = {"Dockerfile": dockerfile}
    if sources_list is not None:
        files["sources.list"] = sources_list.encode()
    job.note(f"\n# ---- Dockerfile ----\n{dockerfile.decode()}# --------------------")
    stage_labels = {LABEL_HOST: host.name, LABEL_ROLE: "stage"}
    try:
        stage = build_image(job.client, files, job.log, labels=stage_labels, nocache=job.rebuild,
                            proxy=job.proxy_env or None, deadline=job.deadline)
    except BuildFailed as exc:
        raise _diagnose_build(host, exc) from exc
    try:
        facts = _probe(job, stage.id)
        _tag_with_facts(job, stage.id, facts, base_digest)
    except BaseException:
        with suppress(docker.errors.DockerException):
            job.client.images.remove(stage.id, force=True)
        raise
    _prune_stale(job.client, host.name, keep={job.names.image, job.names.base or ""})
    _remove_replaced(job.client, replaced)
    return facts


def _tag_with_facts(job: _Job, stage_id: str, facts: HostFacts,
                    base_digest: str | None = None) -> None:
    """Labels need their values at build time: a one-line build on top of the stage."""
    labels = {
        LABEL_HOST: job.host.name,
        LABEL_ROLE: "host",
        LABEL_DIGEST: job.names.digest,
        FACTS_LABEL: facts.to_json(),
    }
    if base_digest:  # the registry image it was built from, pinned (results.json shows it)
        labels[BASE_DIGEST_LABEL] = base_digest
    final = {"Dockerfile": f"FROM {stage_id}\n".encode()}
    try:
        build_image(job.client, final, job.log, labels=labels, tag=job.names.image)
    except BuildFailed as exc:
        raise _Failed(ENGINE_ERROR, f"engine error: {exc}") from exc


def _mirror_for(base: BootstrapBase, mirror: str | None) -> str:
    if base.mirror:
        return base.mirror
    if mirror:
        return mirror
    try:
        return find_mirror("debian")
    except MirrorNotFound as exc:
        raise _Failed(MIRROR_NOT_CONFIGURED, str(exc)) from exc


def _engine_message(exc: docker.errors.DockerException) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation).strip()
    return str(exc).strip()


def _ensure_registry_image(job: _Job, reference: str) -> str | None:
    """Have ``reference`` locally: pull it (always on rebuild, else only when missing),
    within the hostgen deadline. Returns its repository digest (None: the engine has none,
    e.g. an image only ever built or tagged here)."""
    present = None
    with suppress(docker.errors.ImageNotFound):
        present = job.client.images.get(reference)
    if present is not None and not job.rebuild:
        job.note(f"base image {reference}: present")
        return repo_digest(reference, present.attrs.get("RepoDigests") or [])
    job.note(f"pulling {reference}")
    try:
        pulled = pull(job.client, reference, job.log, job.deadline)
    except PullFailed as exc:
        job.note(str(exc))
        if present is not None:
            job.note("using the image already present")
            return repo_digest(reference, present.attrs.get("RepoDigests") or [])
        raise _Failed(BASE_IMAGE_UNAVAILABLE, str(exc)) from exc
    job.note(f"pulled {reference}: {pulled.digest or 'no digest'} ({pulled.image_id[:19]})")
    return pulled.digest


def recorded_base(client: docker.DockerClient, host: HostDefinition,
                   image: str) -> dict[str, str] | None:
    """An image host's base as its host image's label recorded it when it was built."""
    if not isinstance(host.base, ImageBase):
        return None
    digest = ""
    with suppress(docker.errors.DockerException):
        digest = (client.images.get(image).labels or {}).get(BASE_DIGEST_LABEL, "")
    record = {"reference": host.base.reference, "digest": digest}
    if host.base.written:  # a registry mirror's rewrite of what the host file says
        record["written"] = host.base.written
    return record


def _ensure_base(job: _Job, mirror: str | None) -> None:
    """Import the bootstrapped (or given) root filesystem as the host's base image."""
    base_ref, base = job.names.base, job.host.base
    assert base_ref is not None
    if not job.rebuild:
        with suppress(docker.errors.ImageNotFound):
            job.client.images.get(base_ref)
            job.note(f"base image {base_ref}: cached")
            return
    labels = {LABEL_HOST: job.host.name, LABEL_ROLE: "base"}
    if isinstance(base, RootfsBase):
        if not base.path.is_file():
            raise _Failed(BASE_IMAGE_UNAVAILABLE,
                          f"{base.path} does not exist (root filesystem tarball)")
        job.note(f"importing {base.path} as {base_ref}")
        import_tarball(job.client, base.path, base_ref, labels)
        return
    assert isinstance(base, BootstrapBase) and mirror is not None
    scratch = new_work_dir(job.work_dir)
    try:
        tarball = make_rootfs_tarball(base, mirror, scratch, job.log, timeout=job.remaining(),
                                      env=job.proxy_env)
        job.note(f"importing the root filesystem as {base_ref}")
        import_tarball(job.client, tarball, base_ref, labels)
    except RootfsError as exc:
        result = exc.result
        if result is not None and result.timed_out:
            raise _Failed(TIMEOUT, f"hostgen timed out: {exc}") from exc
        raise _Failed(BOOTSTRAP_FAILED, str(exc)) from exc
    finally:
        remove_tree(scratch)


def _diagnose_build(host: HostDefinition, exc: BuildFailed) -> _Failed:
    if exc.timed_out:
        return _Failed(TIMEOUT, f"hostgen timed out: {exc} (step: {exc.step or 'unknown'})")
    if exc.step.startswith("FROM"):
        return _Failed(BASE_IMAGE_UNAVAILABLE, f"base image unavailable: {exc}")
    if any(command in exc.step for command in host.setup + host.prepare):
        return _Failed(SETUP_FAILED, _short_failure(exc))
    return _Failed(BUILD_FAILED, _short_failure(exc))


def _short_failure(exc: BuildFailed) -> str:
    """'RUN ["/bin/sh", "-c", "apt-get ... exited with 100' instead of the whole command."""
    code = re.search(r"non-zero code: (\d+)", str(exc))
    step = exc.step if len(exc.step) <= 60 else exc.step[:57] + "..."
    return f"{step} exited with {code.group(1)}" if code else str(exc)


def _probe(job: _Job, image_id: str) -> HostFacts:
    job.note("\n# probing host facts")
    captured = run_captured(
        job.client,
        image_id,
        probe_command(),
        labels={LABEL_HOST: job.host.name, LABEL_RUN: job.run_id},
        timeout=PROBE_TIMEOUT,
    )
    job.note(captured.stdout + captured.stderr)
    if captured.exit_code != 0:
        raise _Failed(PROBE_FAILED, f"facts probe exited with {captured.exit_code}")
    try:
        facts = with_machine_binfmt(parse_probe_output(captured.stdout))
    except FactsError as exc:
        raise _Failed(PROBE_FAILED, f"facts probe: {exc}") from exc
    job.note(f"facts: {facts.summary()}")
    return facts


def _prune_stale(client: docker.DockerClient, host: str, keep: Collection[str], *,
                 leases: Registry | None = None,
                 say: Callable[[str], None] | None = None) -> None:
    """Untag this host's images of older definitions (ones still in use stay).

    In use: named by a live run's lease (``matrix.containers.leases``; ``say`` tells which),
    or used by a container (the engine refuses).
    """
    say = say or LOG.info
    registry = leases if leases is not None else Registry()
    with registry.frozen() as in_use:
        for image in client.images.list(filters={"label": f"{LABEL_HOST}={host}"}):
            for tag in image.tags:
                if tag in keep or not tag.startswith("dib-matrix/") or tag.startswith(
                        LAST_GOOD_REPOSITORY_PREFIX):
                    continue  # a last-good's host image stays for investigations
                holder = in_use.holder(tag, image.id)
                if holder is not None:
                    say(kept_line(tag, holder))
                    continue
                with suppress(docker.errors.APIError):
                    client.images.remove(tag)


def _image_ids(client: docker.DockerClient, references: Collection[str | None]) -> set[str]:
    ids = set()
    for reference in references:
        if reference:
            with suppress(docker.errors.ImageNotFound):
                ids.add(client.images.get(reference).id)
    return ids


def _remove_replaced(client: docker.DockerClient, previous: set[str], *,
                     leases: Registry | None = None,
                     say: Callable[[str], None] | None = None) -> None:
    """After a rebuild, drop the images the content tags pointed at before (now untagged).

    An image a live run's lease names (by id) stays.
    """
    say = say or LOG.info
    registry = leases if leases is not None else Registry()
    with registry.frozen() as in_use:
        for image_id in previous:
            holder = in_use.holder(image_id)
            if holder is not None:
                say(kept_line(image_id, holder))
                continue
            with suppress(docker.errors.APIError):
                if not client.images.get(image_id).tags:
                    client.images.remove(image_id)
