# tox, pip, pytest and unittest run for real on this machine, as the tox row runs them:
# an interpreter tox cannot find, a package index that does not answer, tests that fail
# or are not there, pip refusing the system Python, a package no index has or that
# needs a newer Python. tox is the checkout's (.venv, tox 4); PyPI is needed for two.
set -u
bin=$(dirname "$PYTHON")
# project NAME TOX_INI [TEST_FILE_CONTENT]: a small project in $WORK/NAME
project() {
    mkdir -p "$WORK/$1/tests"
    printf '%s\n' "$2" > "$WORK/$1/tox.ini"
    [ -n "${3:-}" ] && printf '%s\n' "$3" > "$WORK/$1/tests/test_size.py"
    return 0
}
# run LOG DIR COMMAND...: the output of COMMAND run in DIR, and its exit status
run() { local log=$1 dir=$2; shift 2; echo "+ $*" > "$OUT/$log"
        (cd "$dir" && "$@") < /dev/null >> "$OUT/$log" 2>&1; echo "exit status $?" >> "$OUT/$log"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 NO_COLOR=1 PY_COLORS=0
# pip as a CI runner has it: PyPI only, no local wheel directories or extra indexes.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL

PASSING='def test_size():
    assert int("512") == 512'
FAILING='import unittest


class SizeTest(unittest.TestCase):
    def test_megabytes(self):
        self.assertEqual(int("512MiB".rstrip("MiB")), 524288)'

# An env whose basepython this machine does not have.
project interp '[tox]
envlist = py39
skip_missing_interpreters = false
[testenv]
basepython = python3.9
skip_install = true
commands = python -c "print(1)"'
run tox-interpreter-not-found.log "$WORK/interp" "$bin/tox" -e py39
# Test dependencies from an index that refuses connections.
project index '[tox]
envlist = check
[testenv:check]
skip_install = true
deps = pytest
setenv = PIP_INDEX_URL=http://127.0.0.1:9/simple/
         PIP_CONFIG_FILE=/dev/null
         PIP_RETRIES=1
         PIP_TIMEOUT=3
commands = pytest -q' "$PASSING"
run tox-index-unreachable.log "$WORK/index" "$bin/tox" -e check
# unittest finds a failing test.
project unit '[tox]
envlist = unit
[testenv:unit]
skip_install = true
commands = python -m unittest discover -s tests -v' "$FAILING"
run tox-unittest-failure.log "$WORK/unit" "$bin/tox" -e unit
# pytest collects nothing (the tests directory is empty).
project empty '[tox]
envlist = check
[testenv:check]
skip_install = true
deps = pytest
commands = pytest -q tests'
run tox-no-tests-ran.log "$WORK/empty" "$bin/tox" -e check
# pip straight at an index that does not answer.
run pip-index-unreachable.log "$WORK" "$bin/pip" install --index-url http://127.0.0.1:9/simple/ \
    --retries 1 --timeout 3 --target "$WORK/t1" pyyaml
# A name no index has (PyPI).
run pip-no-such-package.log "$WORK" "$bin/pip" install --target "$WORK/t2" nosuchpkg-corpus-dib-matrix
# A release that needs a newer Python than this machine's 3.11 (PyPI).
run pip-needs-newer-python.log "$WORK" "$bin/pip" install --no-deps --target "$WORK/t3" 'django>=6'
# Debian's own Python refuses pip installs into it (PEP 668).
run pip-externally-managed.log "$WORK" /usr/bin/python3 -m pip install pyyaml
# Successes: a tox env whose tests pass, a pip install.
project ok '[tox]
envlist = check
[testenv:check]
skip_install = true
deps = pytest
commands = pytest -q' "$PASSING"
run tox-pytest-ok.log "$WORK/ok" "$bin/tox" -e check
# An env skipped for its missing interpreter (skip_missing_interpreters), the other passing.
project skip '[tox]
envlist = py39,check
skip_missing_interpreters = true
[testenv]
skip_install = true
commands = python -c "print(1)"'
run tox-skip-missing-interpreter-ok.log "$WORK/skip" "$bin/tox"
run pip-install-ok.log "$WORK" "$bin/pip" install --no-deps --target "$WORK/t4" pyyaml
