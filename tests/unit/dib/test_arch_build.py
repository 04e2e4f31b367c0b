"""A build for an architecture this machine cannot run stops before any work, with one
clear message and a failure record (the handler's absence is simulated with a fake
binfmt_misc directory; the machine's own handlers are left alone)."""

from __future__ import annotations

import json

import pytest

from dib import arch, build, cli, environment


@pytest.fixture
def no_handlers(tmp_path, monkeypatch):
    directory = tmp_path / "binfmt_misc"
    directory.mkdir()
    (directory / "status").write_text("enabled\n")
    (directory / "register").write_text("")
    monkeypatch.setenv(arch.BINFMT_DIR_VAR, str(directory))
    monkeypatch.setattr(environment, "os", _Root())
    monkeypatch.setattr(build, "make_workdir", lambda *a: pytest.fail("work began"))
    return directory


class _Root:
    """os as seen by ensure_root: this test runs as root."""

    def __getattr__(self, name):
        import os

        return getattr(os, name)

    @staticmethod
    def geteuid():
        return 0


def foreign() -> str:
    return "amd64" if arch.host_arch() == "arm64" else "arm64"


def test_build_fails_fast_without_a_binfmt_handler(no_handlers, tmp_path, capsys):
    target = foreign()
    out = tmp_path / "out" / "image"
    code = cli.main(["-a", target, "-t", "tar", "-o", str(out), "debian-minbase"])
    assert code == 1
    logged = capsys.readouterr().out
    assert f"ERROR: no binfmt handler for {target}: no handler for {target} is registered" in logged
    assert "qemu-user-static" in logged
    record = json.loads((tmp_path / "out" / "image.failure.json").read_text())
    assert record["kind"] == "config" and record["phase"] is None
    assert record["message"].startswith(f"no binfmt handler for {target}")


def test_the_kernels_name_of_the_architecture_is_checked_too(no_handlers):
    target = foreign()
    kernel_name = {"arm64": "aarch64", "amd64": "x86_64"}[target]
    with pytest.raises(arch.ArchError, match=f"no binfmt handler for {target}"):
        arch.require(kernel_name)
