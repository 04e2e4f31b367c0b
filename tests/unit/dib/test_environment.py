import subprocess

from dib import environment


def test_curated_environment_keeps_dib_variables_only():
    env = environment.curated(
        {
            "DIB_RELEASE": "trixie",
            "SECRET_TOKEN": "x",
            "PATH": "/bin",
            "http_proxy": "http://p:3128",
        }
    )
    assert env["DIB_RELEASE"] == "trixie"
    assert env["http_proxy"] == "http://p:3128"
    assert "SECRET_TOKEN" not in env


def test_sourced_environment_applies_files_in_order(tmp_path):
    first = tmp_path / "10-a.bash"
    first.write_text("export DIB_RELEASE=${DIB_RELEASE:-bookworm}\nexport X=first\n")
    second = tmp_path / "20-b.bash"
    second.write_text('export X="$X-then-second"\n')
    env = environment.sourced_environment({"PATH": "/usr/bin:/bin"}, [first, second])
    assert env["DIB_RELEASE"] == "bookworm"
    assert env["X"] == "first-then-second"
    kept = environment.sourced_environment({"PATH": "/usr/bin:/bin", "DIB_RELEASE": "sid"}, [first])
    assert kept["DIB_RELEASE"] == "sid"


def test_runner_sources_env_files_and_passes_no_shell_text(tmp_path):
    runner = environment.write_runner(tmp_path)
    env_file = tmp_path / "env; touch pwned"
    env_file.write_text("export GREETING='hello $(not run)'\n")
    script = tmp_path / "hook"
    script.write_text('#!/bin/bash\necho "$GREETING"\n')
    script.chmod(0o755)
    out = subprocess.run(
        [str(runner), str(script), str(env_file)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout == "hello $(not run)\n"
    assert not (tmp_path / "pwned").exists()
