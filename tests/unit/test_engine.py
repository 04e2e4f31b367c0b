"""matrix.containers.engine: cell container lifecycle against a fake engine (no Docker needed)."""

import threading
from pathlib import Path

import docker.errors
import pytest

from matrix.containers.engine import (
    CACHE_MOUNT,
    CELL_CAPABILITIES,
    DIB_MOUNT,
    LABEL_RUN,
    OUT_MOUNT,
    CellSpec,
    EngineError,
    container_name,
    dib_command,
    dib_environment,
    run_cell,
)


class FakeContainer:
    def __init__(self, engine, name, behaviour):
        self.engine, self.name, self.behaviour = engine, name, behaviour
        self.killed = threading.Event()
        self.status = "created"
        self.exit_code = 0

    def start(self):
        self.status = "running"

    def logs(self, stream, follow, since=None):
        yield from self.behaviour(self)

    def wait(self):
        self.status = "exited"
        return {"StatusCode": 137 if self.killed.is_set() else self.exit_code}

    def kill(self):
        self.killed.set()

    def reload(self):
        pass


class FakeEngine:
    """Just enough of docker.DockerClient for run_cell."""

    def __init__(self, behaviour, fail_create=False):
        self.behaviour = behaviour
        self.fail_create = fail_create
        self.containers = self
        self.api = self
        self.created = {}
        self.removed = []
        self.volumes_made = {}

    # containers
    def create(self, image, command, **kwargs):
        if self.fail_create:
            raise docker.errors.ImageNotFound("no such image: " + image)
        container = FakeContainer(self, kwargs["name"], self.behaviour)
        self.created[kwargs["name"]] = (image, command, kwargs)
        return container

    def remove_container(self, name, force, v):
        assert force
        self.removed.append(name)

    # volumes
    def get(self, name):
        if name not in self.volumes_made:
            raise docker.errors.NotFound(name)

    def create_volume(self, name, labels):
        self.volumes_made[name] = labels

    @property
    def alive(self):
        return [name for name in self.created if name not in self.removed]


def _volumes_create(engine):
    # docker.DockerClient.volumes.create(name, labels=...) is the call run_cell makes.
    return lambda name, labels: engine.create_volume(name, labels)


def spec(tmp_path: Path, **changes) -> CellSpec:
    values = dict(
        run_id="r1",
        cell_id="debian-bookworm/bookworm-tar",
        host="debian-bookworm",
        image="dib-matrix/host-debian-bookworm:abc",
        command=("python3", "-m", "dib", "--help"),
        log_path=tmp_path / "logs" / "cell.log",
        timeout=30,
        environment={"DIB_RELEASE": "bookworm"},
        dib_tree=tmp_path,
        out_dir=tmp_path / "out",
        cache_volume="cache-vol",
    )
    values.update(changes)
    return CellSpec(**values)


def make_engine(behaviour, **kwargs):
    engine = FakeEngine(behaviour, **kwargs)

    class Volumes:
        get = engine.get
        create = staticmethod(_volumes_create(engine))

    engine.volumes = Volumes()
    return engine


def test_success_streams_log_and_removes_container(tmp_path):
    engine = make_engine(lambda c: iter([b"hello\n", b"world\n"]))
    result = run_cell(engine, spec(tmp_path))
    assert result.ok and result.exit_code == 0 and not result.timed_out
    assert engine.alive == []
    log = result.log_path.read_text()
    assert "hello\nworld\n" in log
    assert "# command: DIB_RELEASE=bookworm python3 -m dib --help" in log
    assert (tmp_path / "out").is_dir()


def test_container_configuration(tmp_path):
    engine = make_engine(lambda c: iter([]))
    run_cell(engine, spec(tmp_path))
    ((image, command, kwargs),) = engine.created.values()
    assert image == "dib-matrix/host-debian-bookworm:abc"
    assert kwargs["network_mode"] == "host"
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["cap_add"] == list(CELL_CAPABILITIES)
    assert "privileged" not in kwargs
    assert kwargs["labels"][LABEL_RUN] == "r1"
    mounts = {m["Target"]: m for m in kwargs["mounts"]}
    assert mounts[DIB_MOUNT]["ReadOnly"] is True and mounts[DIB_MOUNT]["Type"] == "bind"
    assert mounts[OUT_MOUNT]["Type"] == "bind"
    assert mounts[CACHE_MOUNT]["Type"] == "volume" and mounts[CACHE_MOUNT]["Source"] == "cache-vol"
    assert engine.volumes_made["cache-vol"] == {
        LABEL_RUN: "r1",
        "org.dib-matrix.host": "debian-bookworm",
    }


def test_baked_tree_has_no_dib_mount(tmp_path):
    engine = make_engine(lambda c: iter([]))
    run_cell(engine, spec(tmp_path, dib_tree=None, cache_volume=None))
    ((_, _, kwargs),) = engine.created.values()
    assert [m["Target"] for m in kwargs["mounts"]] == [OUT_MOUNT]


def test_failure_exit_code(tmp_path):
    def fail(container):
        container.exit_code = 2
        yield b"E: broken\n"

    engine = make_engine(fail)
    result = run_cell(engine, spec(tmp_path))
    assert result.exit_code == 2 and not result.ok and not result.timed_out
    assert engine.alive == []


def test_timeout_kills_and_removes(tmp_path):
    def hang(container):
        yield b"started\n"
        container.killed.wait(10)

    engine = make_engine(hang)
    result = run_cell(engine, spec(tmp_path, timeout=0.2))
    assert result.timed_out and not result.ok
    assert result.exit_code == 137
    assert engine.alive == []
    assert "killed after the 0 s cell timeout" in result.log_path.read_text()


def test_keyboard_interrupt_removes_container(tmp_path):
    def interrupted(container):
        yield b"working\n"
        raise KeyboardInterrupt

    engine = make_engine(interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cell(engine, spec(tmp_path))
    assert engine.created and engine.alive == []


def test_engine_error_is_typed_and_cleans_up(tmp_path):
    engine = make_engine(lambda c: iter([]), fail_create=True)
    with pytest.raises(EngineError, match="no such image"):
        run_cell(engine, spec(tmp_path))
    # Removal was attempted by name even though create never returned.
    assert engine.removed == [container_name("r1", "debian-bookworm/bookworm-tar")]


def test_container_names_are_valid_and_distinct():
    name = container_name("run 1", "debian-bookworm/bookworm-tar")
    assert name == "dib-matrix-run-1-debian-bookworm-bookworm-tar"
    long_a = container_name("r", "x" * 200 + "a")
    long_b = container_name("r", "x" * 200 + "b")
    assert long_a != long_b and len(long_a) < 120


def test_dib_invocation_contract():
    assert dib_command(["debian-minimal"], "debian-bookworm") == (
        "python3",
        "-m",
        "dib",
        "-o",
        "/out/debian-bookworm",
        "-t",
        "tar",
        "--image-cache",
        "/cache",
        "debian-minimal",
    )
    env = dib_environment({"DIB_RELEASE": "bookworm"}, "http://mirror.invalid/debian")
    assert env == {
        "DIB_RELEASE": "bookworm",
        "PYTHONPATH": "/opt/dib-matrix",
        "DIB_DISTRIBUTION_MIRROR": "http://mirror.invalid/debian",
    }
    # A target's own mirror wins.
    own = dib_environment({"DIB_DISTRIBUTION_MIRROR": "http://own.invalid"}, "http://m.invalid")
    assert own["DIB_DISTRIBUTION_MIRROR"] == "http://own.invalid"


def test_no_privileged_anywhere():
    import inspect

    import matrix.containers.engine

    assert "privileged=True" not in inspect.getsource(matrix.containers.engine)
