"""qcow2 zstd compression is probed, not read from qemu-img's version (bullseye's 5.2
has no zstd): a fake qemu-img on PATH that rejects zstd as that one does."""

import logging
import os

import pytest

from dib import outputs

FAKE_QEMU_IMG = """#!/bin/bash
# qemu-img VERSION built with or without zstd; records every call.
echo "$*" >> "$(dirname "$0")/calls"
case "$1" in
    --version) echo "qemu-img version {version} (Debian 1:{version}+dfsg-2)" ;;
    create)
        for arg in "$@"; do
            if [ "$arg" = compression_type=zstd ] && [ {zstd} = no ]; then
                echo "qemu-img: ${{@: -2:1}}: Invalid parameter 'zstd'" >&2
                exit 1
            fi
        done
        : > "${{@: -2:1}}" ;;
    convert)
        for arg in "$@"; do
            if [ "$arg" = compression_type=zstd ] && [ {zstd} = no ]; then
                echo "qemu-img: Invalid parameter 'zstd'" >&2
                exit 1
            fi
        done
        : > "${{@: -1}}" ;;
esac
"""


@pytest.fixture
def qemu_img(tmp_path, monkeypatch):
    def install(version: str, zstd: bool):
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        fake = bindir / "qemu-img"
        fake.write_text(FAKE_QEMU_IMG.format(version=version, zstd="yes" if zstd else "no"))
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
        return bindir / "calls"

    outputs.zstd_probe.cache_clear()
    yield install
    outputs.zstd_probe.cache_clear()


def convert_calls(calls):
    return [line.split() for line in calls.read_text().splitlines() if line.startswith("convert")]


def test_qemu_img_without_zstd_falls_back_to_zlib_and_says_why(tmp_path, qemu_img, caplog):
    calls = qemu_img("5.2.0", zstd=False)
    raw = tmp_path / "image.raw"
    raw.write_bytes(b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="dib"):
        outputs.convert(raw, tmp_path / "a.qcow2", "qcow2", "zstd")
        outputs.convert(raw, tmp_path / "b.qcow2", "qcow2", "zstd")
    assert (tmp_path / "a.qcow2").exists() and (tmp_path / "b.qcow2").exists()
    for argv in convert_calls(calls):
        assert "compression_type=zstd" not in argv
        assert "-c" in argv and "-W" in argv  # still compressed (zlib), -W as for >= 5.1
    probes = [line for line in calls.read_text().splitlines() if line.startswith("create")]
    assert len(probes) == 1  # probed once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("qemu-img 5.2 cannot write zstd-compressed qcow2 (qemu-img: ")
    assert warnings[0].endswith("probe.qcow2: Invalid parameter 'zstd'): using zlib")


def test_qemu_img_with_zstd_gets_zstd(tmp_path, qemu_img, caplog):
    calls = qemu_img("7.2.0", zstd=True)
    raw = tmp_path / "image.raw"
    raw.write_bytes(b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="dib"):
        outputs.convert(raw, tmp_path / "a.qcow2", "qcow2", "zstd")
    (argv,) = convert_calls(calls)
    assert argv[argv.index("-o") + 1] == "compression_type=zstd" and "-W" in argv
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_zlib_and_uncompressed_need_no_probe(tmp_path, qemu_img):
    calls = qemu_img("5.2.0", zstd=False)
    raw = tmp_path / "image.raw"
    raw.write_bytes(b"\0" * 4096)
    outputs.convert(raw, tmp_path / "a.qcow2", "qcow2", "zlib")
    outputs.convert(raw, tmp_path / "b.qcow2", "qcow2", "none")
    assert not [line for line in calls.read_text().splitlines() if line.startswith("create")]
    zlib, none = convert_calls(calls)
    assert "-c" in zlib and "-c" not in none


def test_old_qemu_img_is_not_probed(tmp_path, qemu_img, caplog):
    calls = qemu_img("4.2.1", zstd=False)
    assert outputs.effective_compression("zstd", outputs.qemu_img_version()) == "zlib"
    assert not [line for line in calls.read_text().splitlines() if line.startswith("create")]
    assert "qemu-img 4.2 cannot write zstd-compressed qcow2 (needs 5.1)" in caplog.text
