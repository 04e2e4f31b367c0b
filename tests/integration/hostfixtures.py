"""Session fixture body for tests that build host images and run cell containers.

Hosts are built once per test session (cached images from earlier sessions are
reused, as ``dib-matrix hosts build`` would); every container and volume the
session creates carries its run label and is removed at the end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dib.mirror import MirrorNotFound, find_mirror
from matrix.config.hosts import HostDefinition, load_hosts
from matrix.containers.engine import (
    LABEL_RUN,
    CellResult,
    CellSpec,
    EngineError,
    connect,
    remove_run_objects,
    run_cell,
)
from matrix.hostgen.build import HostgenOutcome, build_host

REPO = Path(__file__).resolve().parents[2]


@dataclass
class HostgenSession:
    client: Any
    run_id: str
    mirror: str
    workdir: Path
    hosts: dict[str, HostDefinition]
    outcomes: dict[str, HostgenOutcome] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def build(self, name: str) -> HostgenOutcome:
        """Build (or find cached) ``name`` once per session; later calls return that outcome."""
        if name not in self.outcomes:
            started = time.monotonic()
            self.outcomes[name] = build_host(
                self.client,
                self.hosts[name],
                self.workdir / "logs" / f"{name}.log",
                mirror=self.mirror,
                run_id=self.run_id,
            )
            self.seconds[name] = time.monotonic() - started
            print(f"\nhostgen {self.outcomes[name].one_line()}")
        return self.outcomes[name]

    def image(self, name: str) -> str:
        outcome = self.build(name)
        assert outcome.ok, outcome.evidence
        return outcome.image

    def cell(
        self,
        host: str,
        cell_id: str,
        command: Sequence[str],
        *,
        environment: Mapping[str, str] | None = None,
        timeout: float = 900,
        image: str | None = None,
        dib_tree: Path | None = REPO,
    ) -> CellResult:
        return run_cell(
            self.client,
            CellSpec(
                run_id=self.run_id,
                cell_id=cell_id,
                host=host,
                image=image or self.image(host),
                command=tuple(command),
                log_path=self.workdir / "logs" / host / f"{cell_id}.log",
                timeout=timeout,
                environment=dict(environment or {}),
                dib_tree=dib_tree,
                out_dir=self.out_dir(host),
                cache_volume=f"dib-matrix-test-{self.run_id}-cache-{host}",
            ),
        )

    def out_dir(self, host: str) -> Path:
        return self.workdir / "images" / host

    def labelled_containers(self) -> list[Any]:
        return self.client.containers.list(
            all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}
        )


def open_hostgen_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostgenSession]:
    """Body of a session-scoped fixture: ``yield from open_hostgen_session(tmp_path_factory)``."""
    try:
        client = connect()
    except EngineError as exc:
        pytest.skip(f"no container engine: {exc}")
    try:
        mirror = find_mirror("debian")
    except MirrorNotFound as exc:
        pytest.skip(str(exc))
    session = HostgenSession(
        client=client,
        run_id=f"test-{uuid.uuid4().hex[:10]}",
        mirror=mirror,
        workdir=tmp_path_factory.mktemp("hostgen"),
        hosts=load_hosts(),
    )
    try:
        yield session
    finally:
        remove_run_objects(client, session.run_id)
        client.close()
