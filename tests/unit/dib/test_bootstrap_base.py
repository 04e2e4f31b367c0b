"""A debootstrapped base: never the build machine's name; wget's errors keep their URL."""

from dib.bootstrap import NEUTRAL_HOSTNAME, forget_build_host


def test_the_build_machines_hostname_never_reaches_the_image(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_text("keep me\n")
    (root / "etc/hostname").symlink_to(outside)  # a symlink at the name is replaced
    forget_build_host(root)
    assert (root / "etc/hostname").read_text() == NEUTRAL_HOSTNAME
    assert not (root / "etc/hostname").is_symlink() and outside.read_text() == "keep me\n"
    (root / "etc/hostname").write_text("buildbox\n")  # debootstrap's copy of the machine's
    forget_build_host(root)
    assert (root / "etc/hostname").read_text() == NEUTRAL_HOSTNAME


def test_wgets_url_line_is_kept_with_its_error():
    from dib.bootstrap import with_wget_urls

    url = "http://mirror.example/debian/pool/main/h/hello/hello_2.10_all.deb:"
    lines = ["I: Retrieving hello", url, "2026-12-07 06:22:01 ERROR 404: Not in snapshot.",
             "http://x.example/a: plain text after a URL-like line"]
    assert with_wget_urls(lines) == [
        "I: Retrieving hello", f"{url} 2026-12-07 06:22:01 ERROR 404: Not in snapshot.",
        lines[3]]
