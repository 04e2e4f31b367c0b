"""matrix.config.registry: Docker's reference rules and the registry mirror rewrite."""

from dataclasses import replace

import pytest

from matrix.config.hosts import BootstrapBase, HostDefinition, ImageBase, PackageManager
from matrix.config.matrixfile import Include, load_matrix, resolve_matrix_path
from matrix.config.registry import (
    BadReference,
    describe,
    parse_mirror,
    parse_reference,
    repo_digest,
    rewrite,
    same_repository,
    with_registry_mirror,
)
from matrix.config.targets import Target
from matrix.hostgen.hostimage import image_names

MIRROR = "myregistry.example/hub"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("reference, repository", [
    ("fedora", "docker.io/library/fedora"),
    ("fedora:40", "docker.io/library/fedora"),
    ("library/fedora:40", "docker.io/library/fedora"),
    ("docker.io/library/fedora:40", "docker.io/library/fedora"),
    ("docker.io/fedora:40", "docker.io/library/fedora"),
    ("index.docker.io/library/fedora:40", "docker.io/library/fedora"),
    ("someone/tool:1", "docker.io/someone/tool"),
    ("someone/deep/tool", "docker.io/someone/deep/tool"),
    ("quay.io/x/y", "quay.io/x/y"),
    ("quay.io/x/y:2", "quay.io/x/y"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000/x"),
    ("127.0.0.1:5000/debian:bookworm", "127.0.0.1:5000/debian"),
    ("localhost/x", "localhost/x"),
    ("localhost:5000/a/b:c", "localhost:5000/a/b"),
    ("Registry/x", "Registry/x"),  # an upper-case first part is a host, as Docker reads it
    (f"fedora@{DIGEST}", "docker.io/library/fedora"),
    (f"fedora:40@{DIGEST}", "docker.io/library/fedora"),
])
def test_references_are_read_as_docker_reads_them(reference, repository):
    assert parse_reference(reference).repository == repository


def test_tag_and_digest_are_kept_apart():
    parsed = parse_reference(f"127.0.0.1:5000/debian:bookworm@{DIGEST}")
    assert (parsed.domain, parsed.path, parsed.tag, parsed.digest) == (
        "127.0.0.1:5000", "debian", "bookworm", DIGEST)
    assert str(parsed) == f"127.0.0.1:5000/debian:bookworm@{DIGEST}"
    assert parse_reference("localhost:5000/x").tag is None  # the port is not a tag


@pytest.mark.parametrize("bad", ["", " fedora", "Fedora:40", "fedora:", "fedora:-x",
                                 "quay.io/", "fedora@sha256:12", "a//b", "x_/y"])
def test_references_docker_refuses_are_refused(bad):
    with pytest.raises(BadReference):
        parse_reference(bad)


@pytest.mark.parametrize("reference, pulled", [
    ("fedora:40", f"{MIRROR}/library/fedora:40"),
    ("library/fedora:40", f"{MIRROR}/library/fedora:40"),
    ("docker.io/library/fedora:40", f"{MIRROR}/library/fedora:40"),
    ("index.docker.io/library/fedora:40", f"{MIRROR}/library/fedora:40"),
    ("ubuntu", f"{MIRROR}/library/ubuntu"),
    ("someone/tool:1", f"{MIRROR}/someone/tool:1"),
    (f"fedora@{DIGEST}", f"{MIRROR}/library/fedora@{DIGEST}"),
    (f"fedora:40@{DIGEST}", f"{MIRROR}/library/fedora:40@{DIGEST}"),
])
def test_docker_hub_references_go_through_the_mirror(reference, pulled):
    assert rewrite(reference, MIRROR) == pulled
    assert parse_reference(pulled).domain == "myregistry.example"


@pytest.mark.parametrize("reference", ["quay.io/x/y", "quay.io/x/y:2", "127.0.0.1:5000/x",
                                       "127.0.0.1:5000/debian:bookworm", "localhost/x",
                                       "myregistry.example/hub/library/fedora:40",
                                       "ghcr.io/someone/tool@" + DIGEST])
def test_other_registries_stay_untouched(reference):
    assert rewrite(reference, MIRROR) == reference


def test_no_mirror_changes_nothing():
    assert rewrite("fedora:40", None) == "fedora:40"
    assert rewrite("fedora:40", "") == "fedora:40"


def test_a_mirror_named_after_the_official_namespace_stands_for_the_registry_above():
    mirror = "myregistry.example/library"
    assert rewrite("fedora:40", mirror) == "myregistry.example/library/fedora:40"
    assert rewrite("docker.io/library/fedora:40", mirror) == "myregistry.example/library/fedora:40"
    assert rewrite("someone/tool:1", mirror) == "myregistry.example/someone/tool:1"
    assert rewrite("quay.io/x/y:2", mirror) == "quay.io/x/y:2"
    assert rewrite("fedora:40", "myregistry.example/hub/library") == \
        "myregistry.example/hub/library/fedora:40"


def test_a_mirror_without_a_path_is_the_registry_itself():
    assert rewrite("fedora:40", "127.0.0.1:5000") == "127.0.0.1:5000/library/fedora:40"
    assert rewrite("fedora:40", "localhost") == "localhost/library/fedora:40"


@pytest.mark.parametrize("text, normal", [
    ("myregistry.example", "myregistry.example"),
    ("myregistry.example/", "myregistry.example"),
    ("myregistry.example/hub/docker", "myregistry.example/hub/docker"),
    ("127.0.0.1:5000", "127.0.0.1:5000"),
    ("localhost:5000/x", "localhost:5000/x"),
])
def test_mirrors_are_normalised(text, normal):
    assert parse_mirror(text) == normal


@pytest.mark.parametrize("bad, words", [
    ("https://myregistry.example", "no scheme"),
    ("myregistry/hub", "does not read as a registry host"),  # Docker Hub's namespace
    ("myregistry.example/Hub", "lower-case"),
    ("myregistry.example/hub:1", "without a tag"),
    ("docker.io", "Docker Hub itself"),
    ("", "registry host"),
    (5000, "registry host"),
])
def test_bad_mirrors_say_why(bad, words):
    with pytest.raises(BadReference, match=words):
        parse_mirror(bad)


def test_same_repository_and_repo_digest_follow_the_rules():
    assert same_repository("fedora", "docker.io/library/fedora:40")
    assert not same_repository("fedora", "quay.io/fedora")
    digests = ["quay.io/fedora@sha256:" + "11" * 32, f"fedora@{DIGEST}"]
    assert repo_digest("fedora:40", digests) == f"docker.io/library/fedora@{DIGEST}"
    assert repo_digest("127.0.0.1:5000/x:1", [f"127.0.0.1:5000/x@{DIGEST}"]) == \
        f"127.0.0.1:5000/x@{DIGEST}"
    assert repo_digest("ghcr.io/a/b", digests) is None
    assert repo_digest("fedora", []) is None


def _host(name, base):
    return HostDefinition(name=name, base=base, package_manager=PackageManager.APT)


def test_a_matrix_config_pulls_its_hub_hosts_through_the_mirror():
    hub = _host("ubuntu-noble", ImageBase("ubuntu:noble"))
    quay = _host("other", ImageBase("quay.io/x/y:1"))
    deb = _host("debian-bookworm", BootstrapBase("bookworm"))
    extra = _host("fedora-43", ImageBase("fedora:43"))
    target = Target(name="t", elements=("debian-minbase",))
    bundled = load_matrix(resolve_matrix_path("default"))
    config = replace(bundled, hosts=(hub, quay, deb), targets=(target,),
                     include=(Include(hub, target), Include(extra, target)))
    mirrored, changed = with_registry_mirror(config, MIRROR)
    by_name = {h.name: h for h in mirrored.hosts}
    assert by_name["ubuntu-noble"].base == ImageBase(f"{MIRROR}/library/ubuntu:noble",
                                                     written="ubuntu:noble")
    assert by_name["ubuntu-noble"].base.describe() == \
        f"image {MIRROR}/library/ubuntu:noble (mirror of ubuntu:noble)"
    assert by_name["other"] is quay and by_name["debian-bookworm"] is deb
    assert [i.host.base.reference for i in mirrored.include] == [
        f"{MIRROR}/library/ubuntu:noble", f"{MIRROR}/library/fedora:43"]
    assert describe(changed) == {
        "ubuntu-noble": {"written": "ubuntu:noble", "pulled": f"{MIRROR}/library/ubuntu:noble"},
        "fedora-43": {"written": "fedora:43", "pulled": f"{MIRROR}/library/fedora:43"},
    }
    # A mirrored host is another image: its FROM line differs; what the file wrote does
    # not count, only what is pulled.
    assert image_names(by_name["ubuntu-noble"]).image != image_names(hub).image
    assert image_names(by_name["ubuntu-noble"]).image == image_names(
        replace(hub, base=ImageBase(f"{MIRROR}/library/ubuntu:noble"))).image
    assert with_registry_mirror(config, None) == (config, [])
