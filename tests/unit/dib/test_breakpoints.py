"""dib.breakpoints: which breakpoints a build accepts, and what happens without a terminal."""

import logging

import pytest

from dib import breakpoints
from dib.errors import ConfigError


def test_break_takes_phases_before_and_after_and_after_error():
    env = {"break": "before-install, after-block-device,after-error"}
    assert breakpoints.parse(env) == {"before-install", "after-block-device", "after-error"}
    assert breakpoints.parse({}) == frozenset()
    assert breakpoints.parse({"break": " , "}) == frozenset()


def test_an_unknown_breakpoint_is_named_with_the_choices():
    with pytest.raises(ConfigError) as err:
        breakpoints.parse({"break": "before-install,after-instal,during-root"})
    message = str(err.value)
    assert "unknown breakpoint(s) after-instal, during-root" in message
    assert "before-install" not in message.split("unknown")[1].split(";")[0]
    assert "phases: root, extra-data, pre-install, install" in message


def test_without_a_terminal_the_build_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(breakpoints.sys.stdin, "isatty", lambda: False)

    def no_shell(*args, **kwargs):
        raise AssertionError("a shell without a terminal")

    monkeypatch.setattr(breakpoints.subprocess, "run", no_shell)
    with caplog.at_level(logging.WARNING, logger="dib"):
        breakpoints.stop_here("after-install", {})
    assert "break=after-install: stdin is not a terminal" in caplog.text
