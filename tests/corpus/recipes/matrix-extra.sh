# The real matrix: a hostgen killed at the hostgen timeout, and a foreign-architecture
# target on a machine with no binfmt handler for it.
set -u
mkdir -p "$WORK/hosts" "$WORK/targets"
cat > "$WORK/hosts/corpus-slow.yaml" <<H
name: corpus-slow
description: a host whose image build outlasts the hostgen timeout ($(date +%s))
base:
  bootstrap:
    suite: bookworm
    variant: minbase
packages: [python3, python3-yaml, debootstrap, qemu-utils, tox, python3-pytest]
H
printf 'name: corpus-arm64\nelements: [debian-minimal]\narch: arm64\nenv:\n  DIB_RELEASE: bookworm\noutputs: [tar]\n' \
    > "$WORK/targets/corpus-arm64.yaml"
cat > "$WORK/matrix.yaml" <<EOM
name: corpus-extra
hosts: [debian-bookworm, hosts/corpus-slow.yaml]
targets: [targets/corpus-arm64.yaml]
checks: []
max-parallel: 1
timeout: 15m
hostgen-timeout: 8s
EOM
(cd "$REPO" && "$PYTHON" -m matrix.cli run "$WORK/matrix.yaml" --out "$WORK/out") > "$OUT/run.txt" 2>&1
run=$(readlink -f "$WORK/out/latest") || exit 1
cp -r "$run/logs/." "$OUT/"
docker images -q --filter label=org.dib-matrix.host=corpus-slow | sort -u | xargs -r docker rmi -f > /dev/null
