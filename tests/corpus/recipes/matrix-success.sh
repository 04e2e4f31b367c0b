# The real matrix, everything passing: hostgen, the tox row, a vm build and its boot cell.
set -u
cat > "$WORK/matrix.yaml" <<EOM
name: corpus-success
hosts: [debian-bookworm]
targets: [debian-bookworm-vm]
checks: [tox]
max-parallel: 1
timeout: 20m
EOM
(cd "$REPO" && "$PYTHON" -m matrix.cli run "$WORK/matrix.yaml" --out "$WORK/out") > "$OUT/run.txt" 2>&1
run=$(readlink -f "$WORK/out/latest") || exit 1
cp -r "$run/logs/." "$OUT/"
