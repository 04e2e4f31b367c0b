# The real matrix: a cell killed at the per-cell timeout, and an engine error
# (the run's dib layer removed from the engine while the run goes on, as a
# concurrent `docker image prune -a` or `docker rmi -f` by someone else would).
set -u
tree=$WORK/tree
mkdir -p "$tree" "$WORK/targets"
for part in pyproject.toml tox.ini tests/__init__.py tests/unit/__init__.py tests/unit/dib \
            matrix/run/incontainer dib elements; do
    mkdir -p "$(dirname "$tree/$part")"; cp -a "$REPO/$part" "$tree/$part"
done
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$tree/elements/corpus-stuck/root.d"
cat > "$tree/elements/corpus-stuck/root.d/01-corpus-wait-for-lock" <<'H'
#!/bin/bash
echo "waiting for the image lock held by another build"
sleep 600
H
chmod 755 "$tree/elements/corpus-stuck/root.d/01-corpus-wait-for-lock"
printf 'corpus timestamp %s\n' "$(date +%s)" > "$tree/elements/corpus-stuck/README.md"
printf 'name: corpus-stuck\nelements: [debian-minimal, corpus-stuck]\nenv:\n  DIB_RELEASE: bookworm\noutputs: [tar]\n' \
    > "$WORK/targets/corpus-stuck.yaml"
printf 'name: corpus-after\nelements: [debian-minimal]\nenv:\n  DIB_RELEASE: bookworm\noutputs: [tar]\n' \
    > "$WORK/targets/corpus-after.yaml"
cat > "$WORK/matrix.yaml" <<EOM
name: corpus-timeout
hosts: [debian-bookworm]
targets: [targets/corpus-stuck.yaml, targets/corpus-after.yaml]
checks: []
max-parallel: 1
timeout: 40s
EOM
(cd "$REPO" && "$PYTHON" -m matrix.cli run "$WORK/matrix.yaml" --out "$WORK/out" \
    --dib-tree "$tree") > "$OUT/run.txt" 2>&1 &
runpid=$!
# Once the stuck cell runs, remove the layer its run baked (ours only: this tree's tag).
for _ in $(seq 120); do
    c=$(docker ps --filter "name=corpus-stuck" --format '{{.Image}}' | head -1)
    [ -n "$c" ] && break
    sleep 1
done
echo "removing $c" >> "$OUT/steps.txt"
docker rmi -f "$c" >> "$OUT/steps.txt" 2>&1
wait "$runpid"
run=$(readlink -f "$WORK/out/latest") || exit 1
cp -r "$run/logs/." "$OUT/"
