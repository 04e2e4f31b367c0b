import os

import pytest

from dib import fssize, outputs
from dib.errors import ConfigError


def test_types_are_checked():
    assert outputs.parse_types("tar,qcow2") == ["tar", "qcow2"]
    assert outputs.parse_types("") == ["qcow2"]
    with pytest.raises(ConfigError, match="unknown image type.*iso"):
        outputs.parse_types("qcow2,iso")


@pytest.mark.parametrize(
    "text, size",
    [
        ("2", 2 << 30),
        ("1.5G", 3 << 29),
        ("512M", 512 << 20),
        ("1GiB", 1 << 30),
        ("100K", 100 << 10),
    ],
)
def test_sizes(text, size):
    assert outputs.parse_size(text) == size


def test_bad_size():
    with pytest.raises(ConfigError, match="cannot read image size"):
        outputs.parse_size("big")


def test_tree_usage_counts_blocks_and_hard_links_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 5000)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "d").mkdir()
    usage = fssize.tree_usage(tmp_path)
    assert usage.inodes == 3  # a (=b), d, plus the root
    assert usage.bytes == 8192 + 4096


def test_estimate_leaves_room_for_metadata():
    usage = fssize.TreeUsage(bytes=100 << 20, inodes=10000)
    size = fssize.estimate_fs_size(usage)
    assert size > 110 << 20 and size % (1 << 20) == 0


def test_dispatch_makes_each_type_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        outputs, "make_tar", lambda root, dest, extra: calls.append(("tar", dest.name))
    )
    monkeypatch.setattr(
        outputs, "make_ext4", lambda root, dest, size: calls.append(("ext4", dest.name)) or size
    )
    monkeypatch.setattr(
        outputs, "convert", lambda raw, dest, t, c: calls.append(("convert", raw.name, dest.name))
    )
    root = tmp_path / "root"
    root.mkdir()
    made = outputs.make_outputs(root, tmp_path / "out" / "img", ["tar", "qcow2", "vhd"], tmp_path)
    assert calls == [
        ("tar", "img.tar"),
        ("ext4", "image.raw"),
        ("convert", "image.raw", "img.qcow2"),
        ("convert", "image.raw", "img.vhd"),
    ]
    assert [p.name for p in made] == ["img.tar", "img.qcow2", "img.vhd"]
    assert (tmp_path / "out" / "img.packages").exists()


def test_manifest_reads_dpkg_status(tmp_path):
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: zlib\nStatus: install ok installed\nVersion: 1.2\nArchitecture: amd64\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: apt\nStatus: install ok installed\nVersion: 2.6\nArchitecture: amd64\n"
        "Description: x\n more\n"
    )
    assert outputs.installed_packages(tmp_path) == ["apt 2.6 amd64", "zlib 1.2 amd64"]


def test_checksum_file_is_sha256sum_format(tmp_path):
    image = tmp_path / "i.qcow2"
    image.write_bytes(b"abc")
    sums = outputs.write_checksum(image)
    assert sums.read_text() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  i.qcow2\n"
    )


def test_qcow2_compression_defaults_to_zstd_and_follows_the_variable():
    assert outputs.qcow2_compression({}) == "zstd"
    assert outputs.qcow2_compression({"DIB_QCOW2_COMPRESSION": "ZLIB "}) == "zlib"
    assert outputs.qcow2_compression({"DIB_QCOW2_COMPRESSION": "zstd"}, compress=False) == "none"
    with pytest.raises(ConfigError, match="DIB_QCOW2_COMPRESSION='lz4' is not one of"):
        outputs.qcow2_compression({"DIB_QCOW2_COMPRESSION": "lz4"})


@pytest.mark.parametrize(
    "compression, version, options",
    [
        ("zstd", (7, 2), ["-c", "-o", "compression_type=zstd", "-W"]),
        ("zlib", (7, 2), ["-c", "-W"]),
        ("none", (7, 2), []),
        ("zstd", (5, 0), ["-c"]),  # too old for zstd: zlib, in order
        ("zstd", None, ["-c"]),
    ],
)
def test_qcow2_convert_command(compression, version, options, tmp_path):
    cmd = outputs.convert_command(
        tmp_path / "a.raw", tmp_path / "a.qcow2", "qcow2", compression, version
    )
    assert cmd == [
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        *options,
        str(tmp_path / "a.raw"),
        str(tmp_path / "a.qcow2"),
    ]


def test_other_formats_are_never_compressed(tmp_path):
    cmd = outputs.convert_command(tmp_path / "a.raw", tmp_path / "a.vhd", "vhd", "zstd", (7, 2))
    assert cmd[:6] == ["qemu-img", "convert", "-f", "raw", "-O", "vpc"] and "-c" not in cmd
