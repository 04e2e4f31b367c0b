#!/bin/bash
# The matrix's tox row, run inside a host container: dib's unit tests on the host's
# own Python and tox, offline (system site packages), as an unprivileged user.
set -eu
for tool in runuser tox; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool not available"
        exit 1
    fi
done
src=${DIB_MATRIX_TREE:-/opt/dib-matrix}
work=$(mktemp -d /tmp/tox-check.XXXXXX)
mkdir -p "$work/tests/unit"
cp -a "$src/dib" "$src/elements" "$src/tox.ini" "$src/pyproject.toml" "$work/"
cp -a "$src/tests/__init__.py" "$work/tests/"
cp -a "$src/tests/unit/__init__.py" "$src/tests/unit/dib" "$work/tests/unit/"
chown -R nobody "$work"
echo "python: $(python3 --version 2>&1), tox: $(tox --version 2>&1 | head -n 1)"
cd "$work"
exec runuser -u nobody -- env HOME="$work" tox -c "$work/tox.ini" -e hostcheck
