#!/usr/bin/env bash
# Two nights of a two-kernel, two-shard nightly on one machine, with the
# lab's own commands only: `lab nightly plan`, `lab nightly run --job`,
# `lab merge`, `lab compare --history`, `lab report`, `lab kcidb` (then
# kcidb-io's validator). The jobs run one after another here; on a CI each is
# a machine of the matrix (docs/nightly-github-actions.yml).
#
#   docs/examples/two-nights.sh OUT [LAB]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
lab="${2:-$repo/target/release/lab}"
venv="${ARENA_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arena-lab}/venv-kcidb"

cat > "$out/nightly.toml" <<TOML
shards = 2

[[kernel]]
name = "debian-6.12"
spec = "debian:6.12"

[[kernel]]
name = "debian-7.2"
spec = "debian:7.2"

[[scenarios]]
name = "smoke"
paths = ["$repo/scenarios/smoke", "$repo/scenarios/arena/sof-free-then-sigsegv.yaml", "$repo/scenarios/arena/ba-free-zaps-two-pages.yaml"]
TOML

start=$(date +%s)
for night in 20261207 20261208; do
  "$lab" nightly plan "$out/nightly.toml" > "$out/plan-$night.json"
  jobs=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["include"]))' "$out/plan-$night.json")
  echo "== night $night: $jobs jobs"
  for job in $(seq 1 "$jobs"); do
    t=$(date +%s)
    "$lab" nightly run "$out/nightly.toml" --job "$job" --seed "$night" \
      --results "$out/shards-$night" -- -j 1
    echo "job $job: $(( $(date +%s) - t )) s"
  done
  for dir in "$out/shards-$night"/*/*/; do
    kernel="$(basename "$(dirname "$dir")")"; set_name="$(basename "$dir")"
    mkdir -p "$out/history/$set_name/$kernel"
    "$lab" merge "$dir"shard-*/[0-9]*/ -o "$out/history/$set_name/$kernel/$night"
  done
done

echo "== compare (exit 1 only on a new failure)"
set +e
"$lab" compare --history "$out/history/smoke" --nights 2
echo "compare exit $?"
set -e
"$lab" report "$out/history/smoke" -o "$out/report.html"
for kernel in debian-6.12 debian-7.2; do
  "$lab" kcidb "$out/history/smoke/$kernel/20261208" --origin arena_lab -o "$out/kcidb-$kernel.json"
  "$venv/bin/python" -c 'import kcidb_io, json, sys
data = json.load(open(sys.argv[1]))
kcidb_io.schema.LATEST.validate(data)
print(sys.argv[1] + ": valid KCIDB v%d.%d, %d checkouts, %d builds, %d tests" % (
    data["version"]["major"], data["version"]["minor"],
    len(data["checkouts"]), len(data["builds"]), len(data["tests"])))' "$out/kcidb-$kernel.json"
done
echo "== wall time: $(( $(date +%s) - start )) s"
