"""Every dib unit test starts with the "dib" logger as pytest set it up.

``dib.cli.main`` configures that logger for a build (its own handlers, no
propagation); a test that runs it would otherwise hide every later test's log
records from ``caplog``. Runs on hosts' own Python too (the matrix's tox row).
"""

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_dib_logger():
    logger = logging.getLogger("dib")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.propagate = propagate
    logger.setLevel(level)
