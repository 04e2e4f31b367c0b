"""matrix.hostgen.hostimage: content-hash tags and Dockerfile rendering per base kind."""

import dataclasses
import json
from pathlib import Path

from matrix.config.hosts import BootstrapBase, HostDefinition, ImageBase, PackageManager, load_host
from matrix.hostgen.hostimage import (
    apt_sources,
    env_value,
    exec_form,
    from_image,
    host_digest,
    image_names,
    render_dockerfile,
)

MIRROR = "http://mirror.invalid/debian"


def bootstrap_host(**changes) -> HostDefinition:
    host = HostDefinition(
        name="deb",
        base=BootstrapBase("bookworm"),
        package_manager=PackageManager.APT,
        packages=("python3", "debootstrap"),
    )
    return dataclasses.replace(host, **changes)


def run_lines(dockerfile: str) -> list[list[str]]:
    return [json.loads(line[4:]) for line in dockerfile.splitlines() if line.startswith("RUN ")]


def test_same_definition_same_tag(tmp_path):
    text = "name: h\nbase: {bootstrap: sid}\npackages: [a, b]\n"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "h.yaml").write_text(text)
    # Same content elsewhere, with comments and different layout: same image.
    (tmp_path / "two" / "h.yaml").write_text(
        "# c\nname: h\npackages:\n- a\n- b\nbase:\n  bootstrap: sid\n"
    )
    first = image_names(load_host(tmp_path / "one" / "h.yaml"))
    second = image_names(load_host(tmp_path / "two" / "h.yaml"))
    assert first == second
    assert first.image.startswith("dib-matrix/host-h:")
    assert first.base is not None and first.base.startswith("dib-matrix/base-h:")


def test_one_package_changes_the_tag_but_not_the_base():
    before = image_names(bootstrap_host())
    after = image_names(bootstrap_host(packages=("python3", "debootstrap", "tox")))
    assert before.image != after.image
    assert before.base == after.base


def test_suite_changes_both_tags():
    before = image_names(bootstrap_host())
    after = image_names(bootstrap_host(base=BootstrapBase("trixie")))
    assert before.image != after.image
    assert before.base != after.base


def test_digest_covers_setup_and_environment():
    plain = host_digest(bootstrap_host())
    assert host_digest(bootstrap_host(setup=("true",))) != plain
    assert host_digest(bootstrap_host(environment=(("A", "1"),))) != plain
    assert host_digest(bootstrap_host()) == plain


def test_digest_covers_the_template(monkeypatch, tmp_path):
    import matrix.hostgen.hostimage as hostimage

    plain = host_digest(bootstrap_host())
    for name in ("host.Dockerfile.j2", "facts-probe.sh"):
        (tmp_path / name).write_bytes((hostimage.TEMPLATES_DIR / name).read_bytes())
    monkeypatch.setattr(hostimage, "TEMPLATES_DIR", tmp_path)
    assert host_digest(bootstrap_host()) == plain
    (tmp_path / "host.Dockerfile.j2").write_text("FROM {{ from_image }}\n")
    assert host_digest(bootstrap_host()) != plain


def test_rootfs_digest_follows_tarball_content(tmp_path):
    tarball = tmp_path / "root.tar"
    tarball.write_bytes(b"one")
    (tmp_path / "r.yaml").write_text("name: r\nbase: {rootfs: root.tar}\npackage-manager: apt\n")
    first = image_names(load_host(tmp_path / "r.yaml"))
    tarball.write_bytes(b"two")
    second = image_names(load_host(tmp_path / "r.yaml"))
    assert first.image != second.image and first.base != second.base


def test_bootstrap_dockerfile():
    host = bootstrap_host()
    names = image_names(host)
    text = render_dockerfile(host, from_image(host, names), apt_sources(host.base, MIRROR))
    assert text.splitlines()[1] == f"FROM {names.base}"
    assert "COPY sources.list /etc/apt/sources.list" in text
    (install,) = run_lines(text)
    assert install[:2] == ["/bin/sh", "-c"]
    assert "apt-get" in install[2] and '"$@"' in install[2]
    assert install[3:] == ["install-packages", "python3", "debootstrap"]


def test_image_dockerfile():
    host = HostDefinition(
        name="fed",
        base=ImageBase("fedora:43"),
        package_manager=PackageManager.DNF,
        packages=("python3-pyyaml",),
    )
    text = render_dockerfile(host, from_image(host, image_names(host)), None)
    assert "FROM fedora:43" in text.splitlines()
    assert "sources.list" not in text
    (install,) = run_lines(text)
    assert install[2].startswith("dnf install -y")
    assert install[4:] == ["python3-pyyaml"]


def test_each_package_manager_renders():
    for manager in PackageManager:
        host = bootstrap_host(package_manager=manager)
        (install,) = run_lines(render_dockerfile(host, "base:1", None))
        assert '"$@"' in install[2]


def test_no_packages_no_install_step():
    text = render_dockerfile(bootstrap_host(packages=()), "base:1", None)
    assert run_lines(text) == []


def test_commands_and_environment_are_rendered_safely():
    nasty = "echo \"$HOME\" \\\nRUN rm -rf / ; echo 'x'"
    host = bootstrap_host(
        packages=(),
        prepare=("echo first",),
        setup=(nasty,),
        environment=(("GREETING", 'say "hi" $USER \\ ok'),),
    )
    text = render_dockerfile(host, "base:1", None)
    # The newline inside the command stays inside one JSON string: no extra RUN line.
    assert run_lines(text) == [["/bin/sh", "-c", "echo first"], ["/bin/sh", "-c", nasty]]
    assert 'ENV GREETING="say \\"hi\\" \\$USER \\\\ ok"' in text.splitlines()
    prepare_at = text.index("echo first")
    assert prepare_at < text.index("rm -rf")


def test_filters():
    assert exec_form(["a b", 'c"d']) == '["a b", "c\\"d"]'
    assert env_value("$x") == '"\\$x"'


def test_apt_sources_is_http():
    base = BootstrapBase("trixie", components=("main", "contrib"))
    assert apt_sources(base, "https://mirror.invalid/debian") == (
        "deb http://mirror.invalid/debian trixie main contrib\n"
    )


def test_bundled_templates_exist():
    import matrix.hostgen.hostimage as hostimage

    assert Path(hostimage.TEMPLATES_DIR, hostimage.HOST_TEMPLATE).is_file()
