import pytest

from dib.mirror import MirrorNotFound, apt_source_uris, find_mirror

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://opts.example/debian bookworm main
deb http://plain.example/ubuntu noble main
"""


def apt_root(tmp_path, sources_list=None, parts=None):
    (tmp_path / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (tmp_path / "sources.list").write_text(sources_list)
    for name, text in (parts or {}).items():
        (tmp_path / "sources.list.d" / name).write_text(text)
    return tmp_path


def test_deb822_sources(tmp_path):
    root = apt_root(tmp_path, parts={"debian.sources": DEB822})
    assert find_mirror("debian", env={}, apt_root=root) == "http://mirror.example/debian"


def test_one_line_sources_with_options(tmp_path):
    root = apt_root(tmp_path, sources_list=ONE_LINE)
    assert apt_source_uris(root) == ["http://opts.example/debian", "http://plain.example/ubuntu"]
    assert find_mirror("debian", env={}, apt_root=root) == "http://opts.example/debian"
    assert find_mirror("ubuntu", env={}, apt_root=root) == "http://plain.example/ubuntu"


def test_disabled_deb822_stanza_is_skipped(tmp_path):
    text = "Enabled: no\n" + DEB822
    root = apt_root(tmp_path, parts={"a.sources": text.split("\n\n")[0] + "\n"})
    with pytest.raises(MirrorNotFound):
        find_mirror("debian", env={}, apt_root=root)


def test_environment_wins(tmp_path):
    root = apt_root(tmp_path, sources_list=ONE_LINE)
    env = {"DIB_DISTRIBUTION_MIRROR": "http://local.example/debian/"}
    assert find_mirror("debian", env=env, apt_root=root) == "http://local.example/debian"


def test_nothing_found_says_what_to_set(tmp_path):
    with pytest.raises(MirrorNotFound, match="DIB_DISTRIBUTION_MIRROR is not set"):
        find_mirror("debian", env={}, apt_root=apt_root(tmp_path))
