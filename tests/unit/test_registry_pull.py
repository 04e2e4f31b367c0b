"""matrix.hostgen.pull against a fake Engine API: progress into the log, the registry's
own error kept as the evidence, the deadline ending a pull that hangs."""

import io
import json
import threading
import time
from types import SimpleNamespace

import docker.errors
import pytest

from matrix.hostgen.pull import PullFailed, pull
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify

DIGEST = "sha256:" + "cd" * 32


class FakeSocket:
    def __init__(self):
        self.shut = threading.Event()

    def shutdown(self, how):
        self.shut.set()


class FakeResponse:
    def __init__(self, chunks, hang=False):
        self.chunks = chunks
        self.hang = hang
        self.sock = FakeSocket()
        self.closed = False

    def iter_lines(self, chunk_size=512):
        for chunk in self.chunks:
            yield json.dumps(chunk).encode()
        if self.hang:  # a registry that never answers: only a shut socket ends the read
            if not self.sock.shut.wait(30):
                raise AssertionError("the watchdog never shut the socket")
            raise OSError("socket shut down")

    def close(self):
        self.closed = True


class FakeApi:
    _auth_configs = None
    credstore_env = None

    def __init__(self, response=None, error=None):
        self.response = response
        self.error = error
        self.posted = []

    def _url(self, path):
        return path

    def _post(self, url, **kwargs):
        self.posted.append((url, kwargs))
        if self.error:
            raise self.error
        return self.response

    def _raise_for_status(self, response):
        pass

    def _get_raw_response_socket(self, response):
        return response.sock


class FakeImages:
    def __init__(self, digests):
        self.digests = digests

    def get(self, reference):
        return SimpleNamespace(id="sha256:" + "11" * 32, attrs={"RepoDigests": self.digests})


def client_for(api, digests=()):
    return SimpleNamespace(api=api, images=FakeImages(list(digests)))


def test_a_pull_logs_its_steps_and_pins_the_digest():
    chunks = [{"status": "Pulling from debian", "id": "bookworm"},
              {"status": "Downloading", "id": "a1", "progressDetail": {"current": 5, "total": 9}},
              {"status": "Pull complete", "id": "a1"},
              {"status": f"Digest: {DIGEST}"}]
    api = FakeApi(FakeResponse(chunks))
    log = io.BytesIO()
    pulled = pull(client_for(api, [f"127.0.0.1:5000/debian@{DIGEST}"]),
                  "127.0.0.1:5000/debian:bookworm", log, time.monotonic() + 30)
    assert pulled.digest == f"127.0.0.1:5000/debian@{DIGEST}"
    url, kwargs = api.posted[0]
    assert url == "/images/create"
    assert kwargs["params"] == {"fromImage": "127.0.0.1:5000/debian", "tag": "bookworm"}
    text = log.getvalue().decode()
    assert "bookworm Pulling from debian" in text and "a1 Pull complete" in text
    assert "Downloading" not in text  # byte counts stay out of the log
    assert api.response.closed


def test_a_digest_reference_is_asked_for_by_digest():
    api = FakeApi(FakeResponse([]))
    pull(client_for(api), f"fedora@{DIGEST}", io.BytesIO(), time.monotonic() + 30)
    assert api.posted[0][1]["params"] == {"fromImage": "fedora", "tag": DIGEST}


def test_the_registrys_own_error_is_the_evidence():
    error = {"error": "manifest for 127.0.0.1:5000/debian:nope not found: manifest unknown: "
                      "manifest unknown",
             "errorDetail": {"message": "manifest for 127.0.0.1:5000/debian:nope not found: "
                                        "manifest unknown: manifest unknown"}}
    api = FakeApi(FakeResponse([{"status": "Pulling"}, error]))
    log = io.BytesIO()
    with pytest.raises(PullFailed) as caught:
        pull(client_for(api), "127.0.0.1:5000/debian:nope", log, time.monotonic() + 30)
    line = str(caught.value)
    assert line == ("cannot pull 127.0.0.1:5000/debian:nope: manifest for "
                    "127.0.0.1:5000/debian:nope not found: manifest unknown: manifest unknown")
    assert not caught.value.timed_out
    verdict = classify(Evidence("h", "hostgen", (line,), None, hint="base-image-unavailable"),
                       load_catalogue())
    assert verdict.category.id == "base-image-unavailable"


def test_an_engine_refusal_is_the_evidence():
    refusal = docker.errors.APIError("404", explanation="pull access denied for nothing, "
                                     "repository does not exist")
    with pytest.raises(PullFailed, match="^cannot pull nothing:1: pull access denied"):
        pull(client_for(FakeApi(error=refusal)), "nothing:1", io.BytesIO(),
             time.monotonic() + 30)


def test_a_hanging_registry_ends_at_the_deadline():
    api = FakeApi(FakeResponse([{"status": "Pulling from debian"}], hang=True))
    log = io.BytesIO()
    started = time.monotonic()
    with pytest.raises(PullFailed) as caught:
        pull(client_for(api), "127.0.0.1:5000/debian:bookworm", log, started + 1.0)
    assert caught.value.timed_out
    assert 0.9 < time.monotonic() - started < 10
    assert "(the hostgen timeout)" in str(caught.value)
    assert api.response.sock.shut.is_set()
    assert "still running at the hostgen deadline" in log.getvalue().decode()
    verdict = classify(Evidence("h", "hostgen", (str(caught.value),), None,
                                hint="base-image-unavailable"), load_catalogue())
    assert verdict.category.id == "base-image-unavailable"


def test_no_time_left_means_no_pull():
    api = FakeApi(FakeResponse([]))
    with pytest.raises(PullFailed) as caught:
        pull(client_for(api), "fedora:40", io.BytesIO(), time.monotonic() - 1)
    assert caught.value.timed_out and not api.posted


def test_the_host_image_label_pins_the_base_for_results(tmp_path):
    from matrix.config.hosts import BootstrapBase, HostDefinition, ImageBase, PackageManager
    from matrix.hostgen.build import BASE_DIGEST_LABEL, recorded_base
    from results.model import RunResults
    from results.reader import read_results
    from results.store import save

    pinned = f"127.0.0.1:5000/library/debian@{DIGEST}"
    client = SimpleNamespace(images=SimpleNamespace(
        get=lambda ref: SimpleNamespace(labels={BASE_DIGEST_LABEL: pinned})))
    host = HostDefinition("h", ImageBase("127.0.0.1:5000/library/debian:bookworm",
                                         written="debian:bookworm"), PackageManager.APT)
    record = recorded_base(client, host, "dib-matrix/host-h:1")
    assert record == {"reference": "127.0.0.1:5000/library/debian:bookworm",
                      "digest": pinned, "written": "debian:bookworm"}
    bootstrapped = HostDefinition("d", BootstrapBase("bookworm"), PackageManager.APT)
    assert recorded_base(client, bootstrapped, "dib-matrix/host-d:1") is None
    results = RunResults("r", "m.yaml", ["h"], ["hostgen"])
    save(results, tmp_path)
    assert "base_images" not in json.loads((tmp_path / "results.json").read_text())
    results.base_images["h"] = record
    save(results, tmp_path)
    assert read_results(tmp_path).base_images == {"h": record}
