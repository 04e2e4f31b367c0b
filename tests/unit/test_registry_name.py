"""matrix.containers.registry without an engine: ``--registry`` names (parse_registry,
RegistryName), the addresses RunRegistry.start refuses before it makes anything, the
configurations it writes, and push_pinned's reading of the engine's streams (a fake
Engine API)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest
import yaml

from matrix.config.registryname import RegistryError, RegistryName, parse_registry
from matrix.containers.registry import (
    RunRegistry,
    listen_address,
    render_config,
    render_openssl_config,
)
from matrix.containers.registrypush import push_pinned

DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "11" * 32


@pytest.mark.parametrize("text, host, prefix", [
    ("127.0.0.1:5000", "127.0.0.1:5000", ""),
    ("10.0.0.7:443/ci", "10.0.0.7:443", "ci"),
    ("registry.example", "registry.example", ""),
    ("registry.example:5000/ci/dib-matrix", "registry.example:5000", "ci/dib-matrix"),
    ("localhost", "localhost", ""),
    ("localhost:5000/a.b_c__d-e", "localhost:5000", "a.b_c__d-e"),
    ("reg-1.example.org:65535/x", "reg-1.example.org:65535", "x"),
    ("myhost:1", "myhost:1", ""),
    ("[fd00::2]:5000/ci", "[fd00::2]:5000", "ci"),
    ("[::1]", "[::1]", ""),
])
def test_good_registry_names(text, host, prefix):
    name = parse_registry(text)
    assert name == RegistryName(host, prefix)
    assert str(name) == text


@pytest.mark.parametrize("text, says", [
    # empty, or an empty part
    ("", "empty"),
    ("/ci", "no host"),
    (":5000/ci", "no host"),
    ("registry.example:", "port ''"),
    ("registry.example/", "empty part"),
    ("registry.example//ci", "empty part"),
    ("registry.example/ci/", "empty part"),
    ("registry..example", "not a host name"),
    (".registry.example", "not a host name"),
    ("registry.example.", "not a host name"),
    # schemes
    ("https://registry.example", "no scheme"),
    ("http://127.0.0.1:5000", "no scheme"),
    ("docker://registry.example/ci", "no scheme"),
    ("HTTPS://registry.example", "no scheme"),
    # paths that climb, or are no repository path
    ("registry.example/../etc", "'..'"),
    ("registry.example/ci/..", "'..'"),
    ("registry.example/./ci", "'.'"),
    ("registry.example/-ci", "'-ci'"),
    ("registry.example/ci-", "'ci-'"),
    ("registry.example/a___b", "'a___b'"),
    ("registry.example/ci\\x", "'ci\\\\x'"),
    ("registry.example/ci:latest", "without a tag"),
    ("registry.example/ci@sha256:" + "ab" * 32, "without a tag"),
    # upper case
    ("registry.example/CI", "lower case"),
    ("registry.example/ci/Dib", "lower case"),
    ("Registry.example", "lower case"),
    ("LOCALHOST:5000", "lower case"),
    ("[FD00::2]:5000", "lower case"),
    # ports out of range or not numbers
    ("registry.example:0", "1 to 65535"),
    ("registry.example:65536", "1 to 65535"),
    ("registry.example:99999", "1 to 65535"),
    ("registry.example:123456", "1 to 65535"),
    ("registry.example:-1", "1 to 65535"),
    ("registry.example:05000", "leading zeros"),
    ("registry.example:http", "1 to 65535"),
    ("registry.example:50:00", "brackets"),
    ("[::1]:0", "1 to 65535"),
    ("[::1]5000", "[address]:port"),
    # spaces
    (" registry.example", "' '"),
    ("registry.example ", "' '"),
    ("registry.example/c i", "' '"),
    ("registry.example:5000 /ci", "' '"),
    ("registry.example\t", "'\\t'"),
    ("registry.example\u00a0", "'\\xa0'"),
    # control characters
    ("registry.example\n", "'\\n'"),
    ("registry.example\r/ci", "'\\r'"),
    ("registry.example/ci\x00", "'\\x00'"),
    ("registry.example\x1b[31m", "'\\x1b'"),
    ("registry.example\x7f", "'\\x7f'"),
    ("registry.example\u200b", "'\\u200b'"),
    ("registry.example\u2028", "'\\u2028'"),
    # not ASCII at all (an IDN must be written in punycode)
    ("régistry.example", "'é'"),
    ("registry.example/ci\u0131", "'ı'"),
    # hosts Docker would read as something else
    ("registry/ci", "Docker Hub namespace"),
    ("registry", "Docker Hub namespace"),
    ("999.1.1.1:5000", "not an IPv4 address"),
    ("1.2.3:5000", "not an IPv4 address"),
    ("[127.0.0.1]:5000", "not an IPv6 address"),
    ("[fe80::1%eth0]:5000", "%zone"),
    ("[::1:5000", "[address]:port"),
    ("::1:5000", "brackets"),
    ("user@registry.example", "not a host name"),
    ("registry_1.example", "not a host name"),
    ("-registry.example", "not a host name"),
    ("a" * 64 + ".example", "not a host name"),
    ("registry.example/" + "a" * 250, "longer than 255"),
])
def test_bad_registry_names_say_why(text, says):
    with pytest.raises(RegistryError) as refused:
        parse_registry(text)
    assert says in str(refused.value)
    assert repr(text) in str(refused.value) or not text


@pytest.mark.parametrize("value", [None, 5000, b"registry.example", ["registry.example"]])
def test_a_registry_name_is_text(value):
    with pytest.raises(RegistryError, match="must be text"):
        parse_registry(value)


@pytest.mark.parametrize("name", ["", "../x", "x/..", "X", "a//b", "a b", "a/", "/a",
                                  "a:tag", "a@sha256:" + "ab" * 32, "a\nb", "-a"])
def test_bad_repository_names(name):
    with pytest.raises(RegistryError, match="not a repository name"):
        parse_registry("registry.example/ci").repository(name)


@pytest.mark.parametrize("host, prefix", [
    ("Registry.example", ""), ("registry.example", "ci/"), ("registry.example\n", ""),
    ("registry.example:05000", ""), ("registry.example", "C I"), ("", "ci"),
])
def test_push_checks_a_registry_name_whoever_parsed_it(host, prefix):
    """push_pinned takes any object with ``host`` and ``prefix`` (the matrix file's
    parser makes its own): a name that parse_registry refuses is refused before the
    engine is asked anything."""
    name = SimpleNamespace(host=host, prefix=prefix)
    client = fake_client(PUSHED)
    with pytest.raises(RegistryError, match="--registry"):
        push_pinned(client, "dib-matrix/dib-x:7dd5", name, "dib-matrix/dib-x")
    assert client.api.made == []


def test_repository_names():
    assert parse_registry("registry.example:5000/ci").repository("dib-matrix/dib-x") == \
        "registry.example:5000/ci/dib-matrix/dib-x"
    assert parse_registry("127.0.0.1:5000").repository("x") == "127.0.0.1:5000/x"
    with pytest.raises(RegistryError, match="longer than"):
        parse_registry("registry.example/" + "a" * 200).repository("b" * 60)


# ---------------------------------------------------------------- RunRegistry.start


@pytest.mark.parametrize("address, says", [
    ("", "not an IP address"),
    ("localhost", "not an IP address"),
    ("registry.example", "not an IP address"),
    ("127.0.0.1:5000", "not an IP address"),
    (" 127.0.0.1", "not an IP address"),
    ("127.0.0.1\n", "not an IP address"),
    ("[::1]", "not an IP address"),
    ("0.0.0.0", "unicast"),
    ("::", "unicast"),
    ("224.0.0.1", "unicast"),
    ("ff02::1", "unicast"),
    ("fe80::1%lo", "%zone"),
    ("198.51.100.7", "cannot listen on 198.51.100.7"),  # documentation range: not ours
])
def test_start_refuses_addresses_before_making_anything(tmp_path, address, says):
    with pytest.raises(RegistryError, match=says):
        RunRegistry.start(address, tmp_path / "storage", tmp_path / "work", tmp_path / "ca",
                          certs_d=tmp_path / "certs.d")
    assert list(tmp_path.iterdir()) == []


def test_listen_address_takes_a_local_address():
    assert str(listen_address("127.0.0.1")) == "127.0.0.1"


def test_missing_registry_binary_is_named(tmp_path):
    with pytest.raises(RegistryError, match="no-such-registry not found: install"):
        RunRegistry.start("127.0.0.1", tmp_path / "s", tmp_path / "w", tmp_path / "ca",
                          certs_d=tmp_path / "certs.d", executable="no-such-registry")


@pytest.mark.parametrize("storage", ["/srv/a: b", "/srv/#x", "/srv/x\ny: 1", "/srv/'\"{[",
                                     "/srv/&anchor *alias", "/srv/- item"])
def test_config_keeps_any_path_as_written(storage):
    certificate = SimpleNamespace(cert=Path(storage) / "c", key=Path(storage) / "k")
    config = render_config("127.0.0.1:5000", Path(storage), certificate)
    read = yaml.safe_load(yaml.safe_dump(config))
    assert read["storage"]["filesystem"]["rootdirectory"] == storage
    assert read["http"]["tls"]["key"] == f"{storage}/k"
    assert read["http"]["addr"] == "127.0.0.1:5000"


def test_leaf_names_the_address_and_loopback_once():
    from ipaddress import ip_address

    assert "subjectAltName = IP:10.1.2.3,IP:127.0.0.1\n" in \
        render_openssl_config("x", ip_address("10.1.2.3"))
    assert "subjectAltName = IP:127.0.0.1\n" in render_openssl_config("x", ip_address("127.0.0.1"))
    assert "subjectAltName = IP:fd00::2,IP:127.0.0.1\n" in \
        render_openssl_config("x", ip_address("fd00::2"))
    assert "[leaf]" not in render_openssl_config("a CA")


# ---------------------------------------------------------------- push_pinned


class FakeAPI:
    """The Engine API calls push_pinned makes: tags, a push and a pull stream."""

    def __init__(self, images, push_chunks, push_error=None):
        self.images = images
        self.push_chunks = push_chunks
        self.push_error = push_error
        self.tags: set[str] = set()
        self.made: list[str] = []
        self.pulled: list[str] = []

    def tag(self, image_id, repository, tag):
        self.tags.add(f"{repository}:{tag}")
        self.made.append(f"{repository}:{tag}")

    def remove_image(self, reference, noprune=False):
        if reference not in self.tags:
            raise docker.errors.NotFound(reference)
        self.tags.remove(reference)

    def push(self, repository, tag=None, stream=False, decode=False):
        assert f"{repository}:{tag}" in self.tags
        if self.push_error:
            raise self.push_error
        return iter(self.push_chunks)

    def pull(self, repository, tag=None, stream=False, decode=False):
        self.pulled.append(f"{repository}@{tag}")
        return iter([{"status": f"Digest: {tag}"}])


class FakeImages:
    def __init__(self, image, pulled_id=IMAGE_ID):
        self.image = image
        self.pulled_id = pulled_id
        self.api: FakeAPI | None = None

    def get(self, reference):
        name = reference.partition("@")[0]
        if name.rfind(":") <= name.rfind("/") and "@" not in reference:
            reference += ":latest"  # as the engine reads a name without a tag
        if reference in (self.image.id, *self.image.tags):
            return self.image
        if self.api and reference in self.api.pulled:
            return SimpleNamespace(id=self.pulled_id)
        raise docker.errors.ImageNotFound(reference)


def fake_client(push_chunks, tags=("dib-matrix/dib-x:7dd5",), repo_digests=(),
                push_error=None, pulled_id=IMAGE_ID):
    image = SimpleNamespace(id=IMAGE_ID, tags=list(tags),
                            attrs={"RepoDigests": list(repo_digests)})
    images = FakeImages(image, pulled_id)
    api = FakeAPI(images, push_chunks, push_error)
    images.api = api
    return SimpleNamespace(api=api, images=images)


REGISTRY = RegistryName("10.0.0.7:5000", "ci")
TARGET = "10.0.0.7:5000/ci/dib-matrix/dib-x"
PUSHED = [
    {"status": "The push refers to repository [10.0.0.7:5000/ci/dib-matrix/dib-x]"},
    {"status": "Preparing", "progressDetail": {}, "id": "aaa"},
    {"status": "Preparing", "progressDetail": {}, "id": "bbb"},
    {"status": "Waiting", "progressDetail": {}, "id": "bbb"},
    {"status": "Pushing", "progressDetail": {"current": 512, "total": 4096}, "id": "aaa"},
    {"status": "Pushing", "progressDetail": {"current": 4096, "total": 4096}, "id": "aaa"},
    {"status": "Pushed", "progressDetail": {}, "id": "aaa"},
    {"status": "Layer already exists", "progressDetail": {}, "id": "bbb"},
    {"status": f"7dd5: digest: {DIGEST} size: 740"},
    {"progressDetail": {}, "aux": {"Tag": "7dd5", "Digest": DIGEST, "Size": 740}},
]


def test_push_returns_the_pinned_reference_and_keeps_it_locally():
    client = fake_client(PUSHED)
    pinned = push_pinned(client, "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x")
    assert pinned == f"{TARGET}@{DIGEST}"
    assert client.api.made == [f"{TARGET}:7dd5"]
    assert client.api.tags == set()  # the push's tag is gone ...
    assert client.api.pulled == [pinned]  # ... and the pinned reference pulled back


def test_progress_is_one_line_per_layer_status_change():
    log = io.BytesIO()
    push_pinned(fake_client(PUSHED), "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x",
                log)
    assert log.getvalue().decode().splitlines() == [
        "The push refers to repository [10.0.0.7:5000/ci/dib-matrix/dib-x]",
        "aaa: Preparing", "bbb: Preparing", "bbb: Waiting", "aaa: Pushing", "aaa: Pushed",
        "bbb: Layer already exists", f"7dd5: digest: {DIGEST} size: 740",
        f"Digest: {DIGEST}",
    ]


@pytest.mark.parametrize("aux", [None, {"Digest": "sha256:short"}, {"Digest": 7}, "text"])
def test_digest_from_repo_digests_when_the_stream_has_none(aux):
    chunks = PUSHED[:-1] + ([{"aux": aux}] if aux is not None else [])
    client = fake_client(chunks, repo_digests=[f"other.example/x@sha256:{'cd' * 32}",
                                               f"{TARGET}@{DIGEST}"])
    assert push_pinned(client, "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x") == \
        f"{TARGET}@{DIGEST}"


def test_no_digest_anywhere_is_an_error():
    client = fake_client(PUSHED[:-1])
    with pytest.raises(RegistryError, match="no digest"):
        push_pinned(client, "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x")
    assert client.api.tags == set()


@pytest.mark.parametrize("line", [
    {"errorDetail": {"message": "unauthorized: authentication required"},
     "error": "unauthorized: authentication required"},
    {"error": "unauthorized: authentication required"},
    {"errorDetail": {"message": "unauthorized: authentication required"}},
])
def test_an_error_line_names_the_registry_and_keeps_the_engines_words(line):
    client = fake_client([PUSHED[1], line, PUSHED[-1]])
    log = io.BytesIO()
    with pytest.raises(RegistryError) as failed:
        push_pinned(client, "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x", log)
    assert "10.0.0.7:5000" in str(failed.value)
    assert "unauthorized: authentication required" in str(failed.value)
    assert b"ERROR: unauthorized" in log.getvalue()
    assert client.api.tags == set() and client.api.pulled == []


def test_an_engine_refusal_becomes_a_registry_error():
    response = SimpleNamespace(status_code=500, reason="Server Error", url="x")
    refusal = docker.errors.APIError("500", response, explanation="tag does not exist")
    client = fake_client(PUSHED, push_error=refusal)
    with pytest.raises(RegistryError, match="10.0.0.7:5000: tag does not exist"):
        push_pinned(client, "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x")
    assert client.api.tags == set()


def test_missing_local_image():
    with pytest.raises(RegistryError, match="no local image dib-matrix/other:1"):
        push_pinned(fake_client(PUSHED), "dib-matrix/other:1", REGISTRY, "dib-matrix/dib-x")


def test_an_image_named_only_in_the_target_repository_is_not_pushed():
    """Removing the push's tag would delete an image that has no other name."""
    client = fake_client(PUSHED, tags=[f"{TARGET}:old"], repo_digests=[f"{TARGET}@{DIGEST}"])
    with pytest.raises(RegistryError, match="no name besides"):
        push_pinned(client, IMAGE_ID, REGISTRY, "dib-matrix/dib-x")
    assert client.api.made == []


@pytest.mark.parametrize("local_ref", ["dib-matrix/dib-x:", "dib-matrix/dib-x:-bad",
                                       "dib-matrix/dib-x:" + "t" * 129])
def test_a_local_reference_without_a_usable_tag(local_ref):
    with pytest.raises(RegistryError, match="not an image name with a tag"):
        push_pinned(fake_client(PUSHED), local_ref, REGISTRY, "dib-matrix/dib-x")


def test_untagged_local_reference_pushes_latest():
    chunks = [*PUSHED[:-1], {"aux": {"Tag": "latest", "Digest": DIGEST}}]
    client = fake_client(chunks, tags=("dib-matrix/dib-x:latest",))
    push_pinned(client, "dib-matrix/dib-x", REGISTRY, "dib-matrix/dib-x")
    assert client.api.made == [f"{TARGET}:latest"]


def test_pulled_back_image_must_be_the_pushed_one():
    client = fake_client(PUSHED, pulled_id="sha256:" + "99" * 32)
    with pytest.raises(RegistryError, match="not the pushed"):
        push_pinned(client, "dib-matrix/dib-x:7dd5", REGISTRY, "dib-matrix/dib-x")
