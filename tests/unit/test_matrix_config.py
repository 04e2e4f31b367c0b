import pytest

from matrix.config.diagnostics import ConfigError
from matrix.config.matrixfile import load_matrix, parse_duration, resolve_matrix_path


def write(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


def issues_of(path):
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    return [str(i) for i in err.value.issues]


def test_bundled_matrices_load():
    default = load_matrix(resolve_matrix_path(None))
    assert [h.name for h in default.hosts][:2] == ["debian-bookworm", "debian-trixie"]
    nightly = load_matrix(resolve_matrix_path("nightly"))
    assert len(nightly.hosts) >= 10 and len(nightly.targets) >= 10


def test_unknown_names_list_known_and_suggest(tmp_path):
    found = issues_of(write(tmp_path, "hosts: [debian-bookwrm]\ntargets: [debian-sid]\n"))
    assert len(found) == 1
    assert f"{tmp_path}/m.yaml:1: hosts[0]: unknown host 'debian-bookwrm'" in found[0]
    assert "did you mean 'debian-bookworm'" in found[0]
    assert "known: centos-stream9" in found[0]


def test_every_problem_is_reported_with_line_and_key(tmp_path):
    found = issues_of(write(tmp_path, """\
hosts: [debian-bookworm]
targets: [debian-sid]
exclude:
  - host: debian-*
max-parallel: 0
timeout: soon
env:
  PATH: /evil
colour: red
"""))
    text = "\n".join(found)
    assert "m.yaml:4: exclude[0]: every exclude entry needs a reason" in text
    assert "m.yaml:5: max-parallel: must be a whole number of at least 1" in text
    assert "m.yaml:6: timeout: cannot read duration 'soon'" in text
    assert "m.yaml:8: env.PATH: only DIB_* variable names are accepted" in text
    assert "m.yaml:9: colour: unknown key" in text


def test_malformed_yaml_names_the_line(tmp_path):
    found = issues_of(write(tmp_path, "hosts: [debian-bookworm\ntargets: x\n"))
    assert "m.yaml:" in found[0] and "invalid YAML" in found[0]


def test_unknown_bundled_matrix_suggests():
    with pytest.raises(ConfigError, match="did you mean 'nightly'"):
        resolve_matrix_path("nightli")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), (45, 45),
                                           ("2.5m", 150)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_globs_expand_against_known_names(tmp_path):
    config = load_matrix(write(tmp_path, "hosts: ['debian-*']\ntargets: ['*-noble']\n"))
    assert {h.name for h in config.hosts} == {"debian-bullseye", "debian-bookworm",
                                              "debian-bookworm-rpmtools", "debian-trixie",
                                              "debian-sid"}
    assert [t.name for t in config.targets] == ["ubuntu-noble"]


def test_values_that_would_misbehave_later_are_refused_now(tmp_path):
    found = "\n".join(issues_of(write(tmp_path, """\
hosts: [debian-bookworm]
targets: [debian-bookworm, debian-bookworm-vm]
network: hostt
timeout: .inf
hostgen-timeout: 8d
exclude:
  - {host: debian-bookwrm, reason: typo}
allowed-failures:
  - {target: debian-bookworm-vm:bot}
  - {target: debian-bookworm-vm:boot}
""")))
    assert "m.yaml:3: network: must be one of: host, none, bridge" in found
    assert "m.yaml:4: timeout: duration inf must be more than 0 and at most a week" in found
    assert "m.yaml:5: hostgen-timeout:" in found
    assert "exclude[0].host: 'debian-bookwrm' matches no host of this matrix" in found
    assert "allowed-failures[0].target: 'debian-bookworm-vm:bot' matches no row" in found
    assert "allowed-failures[1]" not in found


def test_categories_is_a_file_or_a_list_of_files(tmp_path):
    from matrix.config.matrixfile import load_matrix

    one = load_matrix(write(tmp_path, "hosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"
                                      "categories: mine.yaml\n"))
    assert one.categories == (tmp_path / "mine.yaml",)
    found = "\n".join(issues_of(write(tmp_path, "hosts: [debian-bookworm]\n"
                                                "targets: [debian-bookworm]\ncategories: 5\n")))
    assert "categories: must be a file name or a list of file names" in found


def test_boot_timeout_defaults_to_the_cell_timeout_capped_at_ten_minutes(tmp_path):
    base = "hosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"
    assert load_matrix(write(tmp_path, base)).boot_timeout == 600
    assert load_matrix(write(tmp_path, base + "timeout: 2m\n")).boot_timeout == 120
    assert load_matrix(write(tmp_path, base + "boot-timeout: 15m\n")).boot_timeout == 900
    found = "\n".join(issues_of(write(tmp_path, base + "boot-timeout: never\n")))
    assert "m.yaml:3: boot-timeout: cannot read duration 'never'" in found


def test_command_line_overrides_go_through_the_keys_own_parser(tmp_path):
    path = write(tmp_path, "hosts: [debian-bookworm]\ntargets: [debian-bookworm]\ntimeout: 1h\n")
    config = load_matrix(path, overrides={"timeout": "20m", "fail-fast": True, "retries": 2})
    assert (config.timeout, config.boot_timeout, config.fail_fast, config.retries) == (
        1200, 600, True, 2)
    with pytest.raises(ConfigError) as err:
        load_matrix(path, overrides={"max-parallel": 0, "timeout": "soon"})
    text = str(err.value)
    assert "command line: --max-parallel: must be a whole number of at least 1" in text
    assert "command line: --timeout: cannot read duration 'soon'" in text


def test_run_help_and_options_come_from_the_key_table():
    from matrix.cli import build_parser
    from matrix.config.matrixfile import MATRIX_KEYS, OVERRIDES

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    text = run.format_help()
    for key in MATRIX_KEYS:
        assert f"\n  {key.name} " in text, key.name
    options = {o for action in run._actions for o in action.option_strings}
    assert {f"--{key.name}" for key in OVERRIDES} <= options
    assert {"--max-parallel", "--timeout", "--retries", "--fail-fast",
            "--boot-timeout"} <= options
    args = build_parser().parse_args(["run", "--max-parallel", "3", "--timeout", "20m"])
    assert (args.max_parallel, args.timeout, args.fail_fast) == (3, "20m", None)


def test_the_docs_document_every_matrix_key():
    from pathlib import Path

    from matrix.config.matrixfile import MATRIX_KEYS

    doc = (Path(__file__).parents[2] / "docs" / "matrix-file.md").read_text()
    section = doc.split("\n## Registries and registry mirrors", 1)[0]
    missing = [key.name for key in MATRIX_KEYS if f"`{key.name}`" not in section]
    assert not missing, f"docs/matrix-file.md's matrix file part lacks {missing}"


def test_plan_takes_the_same_overrides_as_run(capsys):
    from matrix.cli import main

    assert main(["plan", "--boot-timeout", "soon"]) == 2
    assert "command line: --boot-timeout: cannot read duration 'soon'" in capsys.readouterr().err
