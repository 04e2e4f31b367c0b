# The real matrix, everything passing: hostgen, the tox row, a vm build and its boot cell.
set -u
# A small host of its own, so its hostgen log is a whole image build, not "cached";
# its setup removes runuser, which the tox row needs.
mkdir -p "$WORK/hosts"
cat > "$WORK/hosts/corpus-small.yaml" <<H
name: corpus-small
description: bookworm with what dib needs for tar images (built fresh at $(date +%s))
base:
  bootstrap:
    suite: bookworm
    variant: minbase
packages: [python3, python3-yaml, debootstrap, gpgv, tar, util-linux, tox, python3-pytest]
setup: ["rm -f /usr/sbin/runuser /sbin/runuser"]
H
cat > "$WORK/matrix.yaml" <<EOM
name: corpus-success
hosts: [debian-bookworm, hosts/corpus-small.yaml]
targets: [debian-bookworm-vm]
checks: [tox]
exclude:
  - {host: corpus-small, target: debian-bookworm-vm, reason: hostgen and tox only}
max-parallel: 1
timeout: 20m
EOM
(cd "$REPO" && "$PYTHON" -m matrix.cli run "$WORK/matrix.yaml" --out "$WORK/out") > "$OUT/run.txt" 2>&1
run=$(readlink -f "$WORK/out/latest") || exit 1
cp -r "$run/logs/." "$OUT/"
# The corpus-small images are this recipe's own (a new one per run): remove them.
docker images -q --filter label=org.dib-matrix.host=corpus-small | sort -u | xargs -r docker rmi -f > /dev/null
