# The real matrix: hostgen of bootstrap hosts whose mirror refuses connections or
# does not resolve (the host YAML's own mirror: key).
set -u
mkdir -p "$WORK/hosts"
for pair in "refused http://127.0.0.1:9/debian" "noresolve http://nonexistent.invalid/debian"; do
    set -- $pair
    cat > "$WORK/hosts/corpus-mirror-$1.yaml" <<H
name: corpus-mirror-$1
description: bootstrap from a mirror that is not there ($1)
base:
  bootstrap:
    suite: bookworm
    variant: minbase
    mirror: $2
packages: [python3]
H
done
cat > "$WORK/matrix.yaml" <<EOM
name: corpus-hostgen
hosts: [hosts/corpus-mirror-refused.yaml, hosts/corpus-mirror-noresolve.yaml]
targets: [debian-bookworm]
checks: []
max-parallel: 1
EOM
(cd "$REPO" && "$PYTHON" -m matrix.cli run "$WORK/matrix.yaml" --out "$WORK/out") > "$OUT/run.txt" 2>&1
run=$(readlink -f "$WORK/out/latest") || exit 1
cp -r "$run/logs/." "$OUT/"
