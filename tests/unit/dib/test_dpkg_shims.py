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


def _path_tree(root):
    """Directories, files and every kind of symlink copy_file's paths can meet."""
    (root / "usr/lib/modules/k/kernel").mkdir(parents=True)
    (root / "usr/lib/modules/k/kernel/a.ko").write_text("a")
    (root / "usr/bin").mkdir()
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/modules/k/kernel/link.ko").symlink_to("a.ko")
    (root / "usr/lib/modules/k/kernel/dangling.ko").symlink_to("missing.ko")
    (root / "usr/lib/modules/k/plain").write_text("not a directory")
    return root


def _path_shapes(root):
    r = str(root)
    tails = ["usr/lib/modules/k/kernel/a.ko", "usr/lib/modules/k/kernel", "usr/lib/modules/k/",
             "lib/modules/k/kernel/a.ko", "bin", "usr/lib/modules/k/kernel/link.ko",
             "usr/lib/modules/k/kernel/dangling.ko", "usr/lib/modules/k/kernel/new.ko",
             "usr/lib/missing/new.ko", "usr/lib/modules/k/plain/x", "usr/./lib/modules",
             "usr/lib/../lib/modules", "usr/lib/modules/..", "usr/lib/modules/.",
             "usr//lib///modules//k", "usr/lib/modules/k/kernel/a.ko/", "usr/lib/mo*ules/k",
             "usr/lib/modules/k/kernel/a b.ko"]
    shapes = [f"{r}/{tail}" for tail in tails] + [f"/{r}/{tails[0]}", f"//{r}//{tails[3]}"]
    return shapes + ["/", "//", "///", "", "relative/path", ".", "/bin", "/usr/bin/"]


def _answers(calls, paths_file=None):
    lines = [f'. "{paths_file}"'] if paths_file else []
    for argv in calls:
        quoted = " ".join("'" + arg.replace("'", "'\\''") + "'" for arg in argv)
        lines.append(f"out=$({quoted} 2>&1); echo \"{argv[0]} $? [$out]\"")
    run = subprocess.run(["sh", "-c", "\n".join(lines)], capture_output=True, text=True,
                         check=True)
    return run.stdout.splitlines()


def test_mkinitramfs_path_functions_answer_as_the_tools_do(tmp_path):
    """Every call the shell answers gets the tool's own answer: output and status."""
    root = _path_tree(tmp_path)
    calls = [[tool, flag, path] for path in _path_shapes(root)
             for tool, flag in (("realpath", "-ms"), ("realpath", "-s"), ("readlink", "-f"))]
    calls += [["realpath", "--relative-to", str(root), str(root / "usr/lib")],
              ["readlink", str(root / "bin")]]
    with_functions = _answers(calls, SHIMS / "mkinitramfs-paths.sh")
    tools_only = _answers(calls)
    assert with_functions == tools_only
    assert len(with_functions) == len(calls)


def test_mkinitramfs_path_functions_keep_mkdir_p(tmp_path):
    root = _path_tree(tmp_path)
    paths = SHIMS / "mkinitramfs-paths.sh"
    for target, made in ((root / "usr/lib/modules", True), (root / "new/deeper", True),
                         (root / "usr/lib/modules/k/plain", False), (root / "lib", True)):
        run = subprocess.run(["sh", "-c", '. "$1"; mkdir -p "$2"', "sh", str(paths),
                              str(target)], capture_output=True, text=True)
        assert (run.returncode == 0) == made, run.stderr
        assert target.is_dir() == made


def test_mkinitramfs_path_functions_skip_the_tools(tmp_path):
    """The point of them: the common copy_file questions run no program."""
    root = _path_tree(tmp_path)
    module = f"{root}/usr/lib/modules/k/kernel/a.ko"
    script = (f'. "{SHIMS / "mkinitramfs-paths.sh"}"; PATH=/nonexistent; '
              f'realpath -ms "/{module}" && realpath -s "{module}" && readlink -f "{module}" '
              f'&& readlink -f /bin && mkdir -p "{root}/usr/lib"')
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [module, module, module, os.path.realpath("/bin")]
