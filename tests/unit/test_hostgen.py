"""matrix.hostgen.build against a fake engine: cached, unpullable and unconfigured outcomes."""

import io
from dataclasses import replace
from types import SimpleNamespace

import docker.errors
import pytest

import matrix.hostgen.build as hostgen
from dib.mirror import MirrorNotFound
from matrix.config.hosts import BootstrapBase, HostDefinition, ImageBase, PackageManager
from matrix.hostgen.build import HostgenStatus, build_host
from matrix.hostgen.facts import FACTS_LABEL, HostFacts
from matrix.hostgen.hostimage import image_names
from matrix.hostgen.imagebuild import BuildFailed, build_image
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify

FACTS = HostFacts(tools=("debootstrap",), debootstrap_scripts=("bookworm",), arch="x86_64")


class FakeImages:
    def __init__(self, present=None, pull_error=None):
        self.present = dict(present or {})
        self.pull_error = pull_error
        self.pruned = []

    def get(self, reference):
        if reference not in self.present:
            raise docker.errors.ImageNotFound(reference)
        return SimpleNamespace(id="sha256:1", labels=self.present[reference], tags=[reference])

    def pull(self, reference):
        raise self.pull_error

    def prune(self, filters):
        self.pruned.append(filters)


class FakePullApi:
    """The Engine API's POST /images/create, failing as the engine would."""

    _auth_configs = None
    credstore_env = None

    def __init__(self, images):
        self.images = images

    def _url(self, path):
        return path

    def _post(self, url, **kwargs):
        raise self.images.pull_error


def fake_client(images):
    return SimpleNamespace(images=images, api=FakePullApi(images))


def image_host() -> HostDefinition:
    return HostDefinition(
        name="img", base=ImageBase("unpullable:1"), package_manager=PackageManager.DNF
    )


def test_cached_host_is_not_built(tmp_path):
    host = image_host()
    names = image_names(host)
    client = fake_client(FakeImages({names.image: {FACTS_LABEL: FACTS.to_json()}}))
    outcome = build_host(client, host, tmp_path / "log")
    assert outcome.status is HostgenStatus.CACHED
    # binfmt: the handlers of this machine's kernel, read when facts are loaded
    assert replace(outcome.facts, binfmt=None) == FACTS and outcome.image == names.image
    assert not (tmp_path / "log").exists()


def test_image_without_facts_is_not_a_cache_hit(tmp_path):
    host = image_host()
    names = image_names(host)
    error = docker.errors.APIError("pull failed", explanation="manifest unknown")
    client = fake_client(FakeImages({names.image: {}}, pull_error=error))
    outcome = build_host(client, host, tmp_path / "log")
    assert outcome.status is HostgenStatus.FAILED


def test_unpullable_image_is_base_image_unavailable(tmp_path):
    error = docker.errors.APIError("500", explanation="dial tcp: lookup registry: no such host")
    images = FakeImages(pull_error=error)
    outcome = build_host(fake_client(images), image_host(), tmp_path / "img.log")
    assert outcome.status is HostgenStatus.FAILED and not outcome.ok
    assert outcome.hint == "base-image-unavailable"
    assert outcome.evidence == "cannot pull unpullable:1: dial tcp: lookup registry: no such host"
    assert outcome.one_line() == f"img: failed: {outcome.evidence}"
    assert outcome.evidence in (tmp_path / "img.log").read_text()
    verdict = classify(Evidence("img", "hostgen", (outcome.evidence,), tmp_path / "img.log",
                                hint=outcome.hint), load_catalogue())
    assert verdict.category.id == "base-image-unavailable"
    assert images.pruned == [{"dangling": True, "label": "org.dib-matrix.host=img"}]


def test_no_mirror_is_a_clear_cause(tmp_path, monkeypatch):
    def no_mirror(distro):
        raise MirrorNotFound("no debian mirror: set DIB_DISTRIBUTION_MIRROR")

    monkeypatch.setattr(hostgen, "find_mirror", no_mirror)
    host = HostDefinition(
        name="deb", base=BootstrapBase("bookworm"), package_manager=PackageManager.APT
    )
    client = fake_client(FakeImages())
    outcome = build_host(client, host, tmp_path / "deb.log")
    assert outcome.hint == "mirror-not-configured"
    assert "DIB_DISTRIBUTION_MIRROR" in outcome.evidence


def test_rebuild_skips_the_cache(tmp_path):
    host = image_host()
    names = image_names(host)
    error = docker.errors.APIError("500", explanation="offline")
    images = FakeImages({names.image: {FACTS_LABEL: FACTS.to_json()}}, pull_error=error)
    outcome = build_host(fake_client(images), host, tmp_path / "l", rebuild=True)
    assert outcome.status is HostgenStatus.FAILED
    assert outcome.hint == "base-image-unavailable"


class FakeBuildApi:
    def __init__(self, chunks):
        self.chunks = chunks

    def build(self, **kwargs):
        assert kwargs["network_mode"] == "host" and kwargs["pull"] is False
        return iter(self.chunks)


def test_build_output_lines_split_across_chunks(tmp_path):
    # The engine sends apt's coloured stderr in pieces: "E", ":", " Unable ...".
    chunks = [
        {"stream": "Step 3/6 : RUN apt-get install"},
        {"stream": "\n"},
        {"stream": "\x1b[91mE"},
        {"stream": ":"},
        {"stream": " Unable to locate package nope\n\x1b[0"},
        {"stream": "m"},
        {"error": "returned a non-zero code: 100", "errorDetail": {"message": "code: 100"}},
    ]
    client = SimpleNamespace(api=FakeBuildApi(chunks))
    log = io.BytesIO()
    with pytest.raises(BuildFailed) as failed:
        build_image(client, {"Dockerfile": b"FROM x\n"}, log, labels={})
    assert failed.value.tail == (
        "Step 3/6 : RUN apt-get install",
        "E: Unable to locate package nope",
    )
    assert failed.value.step == "RUN apt-get install"
    assert b"E: Unable to locate package nope" in log.getvalue()


def test_build_returns_the_image_id():
    chunks = [{"stream": "Step 1/1 : FROM x\n"}, {"aux": {"ID": "sha256:abc"}}]
    client = SimpleNamespace(api=FakeBuildApi(chunks))
    built = build_image(client, {"Dockerfile": b"FROM x\n"}, io.BytesIO(), labels={})
    assert built.id == "sha256:abc"


def test_package_cache_proxy_reaches_debootstrap_and_the_dockerfile(tmp_path, monkeypatch):
    seen = {}

    def fake_rootfs(base, mirror, work_dir, log, timeout=0, env=None):
        seen["timeout"] = timeout
        seen["debootstrap"] = dict(env or {})
        raise hostgen.RootfsError("stop here")

    monkeypatch.setattr(hostgen, "make_rootfs_tarball", fake_rootfs)
    host = HostDefinition(
        name="deb", base=BootstrapBase("bookworm"), package_manager=PackageManager.APT
    )
    proxy = {"http_proxy": "http://127.0.0.1:3142", "no_proxy": "localhost"}
    build_host(SimpleNamespace(images=FakeImages()), host, tmp_path / "deb.log",
               mirror="http://mirror.invalid/debian", proxy_env=proxy, work_dir=tmp_path,
               timeout=120)
    assert seen["debootstrap"] == proxy
    assert 100 < seen["timeout"] <= 120  # what is left of the hostgen's own timeout


def test_build_past_its_deadline_is_abandoned_as_a_timeout():
    class Api:
        def build(self, **kwargs):
            chunks = [{"stream": "Step 2/3 : RUN apt-get install -y tox\n"},
                      {"stream": "Unpacking ...\n"}, {"aux": {"ID": "sha256:3"}}]
            return (chunk for chunk in chunks)  # the SDK's stream is a generator

    with pytest.raises(BuildFailed) as failed:
        build_image(SimpleNamespace(api=Api()), {"Dockerfile": b"FROM x\n"}, io.BytesIO(),
                    labels={}, deadline=0.0)
    assert failed.value.timed_out and failed.value.step == "RUN apt-get install -y tox"
    host = image_host()
    assert hostgen._diagnose_build(host, failed.value).hint == "timeout"


def test_a_silent_step_is_killed_at_the_deadline():
    import threading
    import time

    killed = threading.Event()

    class Api:
        def build(self, **kwargs):
            yield {"stream": "Step 2/2 : RUN sleep 600\n"}
            yield {"stream": " ---> Running in 3f2a1b0c9d8e\n"}
            assert killed.wait(10), "the step was never killed"  # silent until then
            yield {"error": "The command returned a non-zero code: 137",
                   "errorDetail": {"message": "The command returned a non-zero code: 137"}}

        def kill(self, container):
            assert container == "3f2a1b0c9d8e"
            killed.set()

    started = time.monotonic()
    with pytest.raises(BuildFailed) as failed:
        build_image(SimpleNamespace(api=Api()), {"Dockerfile": b"FROM x\n"}, io.BytesIO(),
                    labels={}, deadline=time.monotonic() + 0.3)
    assert failed.value.timed_out and failed.value.step == "RUN sleep 600"
    assert time.monotonic() - started < 5


def test_build_proxy_replaces_this_process_proxy(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://corporate:8080")
    captured = {}

    class Api:
        def build(self, **kwargs):
            captured.update(kwargs["buildargs"])
            return iter([{"aux": {"ID": "sha256:2"}}])

    client = SimpleNamespace(api=Api())
    build_image(client, {"Dockerfile": b"FROM x\n"}, io.BytesIO(), labels={},
                proxy={"http_proxy": "http://127.0.0.1:3142", "PATH": "/ignored"})
    assert captured == {"http_proxy": "http://127.0.0.1:3142"}
    build_image(client, {"Dockerfile": b"FROM x\n"}, io.BytesIO(), labels={})
    assert captured["http_proxy"] == "http://corporate:8080"
