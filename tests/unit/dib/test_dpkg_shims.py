"""elements/dpkg/shims: pargzip.py (the pigz stand-in mkinitramfs finds) and pigz."""

import gzip
import importlib.util
import io
import os
import random
import subprocess
from pathlib import Path

import pytest

SHIMS = Path(__file__).resolve().parents[3] / "elements" / "dpkg" / "shims"


@pytest.fixture
def pargzip(monkeypatch):
    spec = importlib.util.spec_from_file_location("pargzip", SHIMS / "pargzip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "BLOCK", 4096)  # many blocks from a small input
    return module


def sample(size):
    rng = random.Random(size)
    words = [bytes(rng.choice(b"abcdefgh") for _ in range(rng.randint(1, 12)))
             for _ in range(300)]
    return b" ".join(rng.choice(words) for _ in range(size // 6))[:size]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 100_000])
@pytest.mark.parametrize("threads", [1, 3])
def test_one_gzip_stream_that_unpacks_to_the_input(pargzip, size, threads):
    data = sample(size)
    out = io.BytesIO()
    pargzip.compress(io.BytesIO(data), out, 6, threads)
    packed = out.getvalue()
    assert gzip.decompress(packed) == data
    assert packed[:4] == b"\x1f\x8b\x08\x00" and packed[4:8] == b"\0\0\0\0"  # no name/time


def test_the_dictionary_keeps_repeats_across_blocks(pargzip):
    block = sample(4096)
    out = io.BytesIO()
    pargzip.compress(io.BytesIO(block * 20), out, 6, 2)
    assert len(out.getvalue()) < 2 * len(gzip.compress(block))


def test_command_line(pargzip, tmp_path, capsysbinary):
    source = tmp_path / "initramfs.cpio"
    source.write_bytes(sample(50_000))
    assert pargzip.main(["-9", "-c", str(source)]) == 0
    assert gzip.decompress(capsysbinary.readouterr().out) == source.read_bytes()
    for other in (["-d", "-c", str(source)], ["-c"], [str(source)], ["-c", "a", "b"]):
        assert pargzip.main(other) == 2  # the shim runs gzip with these


def test_pigz_shim_compresses_like_mkinitramfs_asks_and_hands_the_rest_to_gzip(tmp_path):
    source = tmp_path / "main.cpio"
    source.write_bytes(sample(30_000))
    env = {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    packed = subprocess.run([str(SHIMS / "pigz"), "-c", str(source)], check=True,
                            capture_output=True, env=env).stdout
    assert gzip.decompress(packed) == source.read_bytes()
    subprocess.run([str(SHIMS / "pigz"), "-k", str(source)], check=True, env=env)
    assert gzip.decompress((tmp_path / "main.cpio.gz").read_bytes()) == source.read_bytes()
