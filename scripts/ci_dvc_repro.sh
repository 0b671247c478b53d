#!/usr/bin/env bash
# CI: `dvc repro` of dvc.yaml on the small demo library, in a scratch copy of this checkout.
#
#   1. a first `dvc repro` runs every stage;
#   2. a second `dvc repro` runs none (`dvc status` is clean);
#   3. after one feature parameter changes (features.hop_length), `dvc repro` runs exactly
#      features, model, evaluation and predictions; a second `dvc repro` started meanwhile is refused (DVC's lock);
#   4. `dvc push` to the default local remote, then `dvc pull` into an emptied workspace and cache,
#      gives back every output (`dvc status` clean again).
#
# The copy (tracked and untracked, not ignored, files) reuses this checkout's environments:
# .venv (reconet, dvc), .venv-spleeter and models/ (the Spleeter checkpoint); it installs nothing.
# Its params.yaml asks for the small demo library, 2 epochs and the song split only.
# KEEP=1 keeps the scratch folder (its path is printed) for a look after a failure.
set -euo pipefail

checkout=$(cd "$(dirname "$0")/.." && pwd)
python=$checkout/.venv/bin/python
for need in "$checkout/.venv/bin/dvc" "$checkout/.venv/bin/reconet" "$checkout/models/spleeter-2stems.safetensors"; do
  [ -e "$need" ] || { echo "ci_dvc_repro: missing $need: run scripts/setup.sh (make setup) first" >&2; exit 2; }
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/reconet-dvc-ci.XXXXXX")
project=$scratch/reconet   # the default remote (.dvc/config: ../../reconet-dvc-remote) lands beside it
if [ "${KEEP:-0}" = 1 ]; then
  trap 'echo "ci_dvc_repro: scratch copy kept in $scratch"' EXIT
else
  trap 'rm -rf "$scratch"' EXIT
fi

fail() { echo "ci_dvc_repro: FAILED: $*" >&2; exit 1; }
started=$SECONDS
step() { echo; echo "=== ci_dvc_repro [$((SECONDS - started)) s]: $*"; }

step "scratch copy of $checkout in $project"
mkdir -p "$project"
(cd "$checkout" && git ls-files -z --cached --others --exclude-standard) |
  (cd "$checkout" && tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$project"
cd "$project"
git init -q
git add -A
git -c user.name=ci -c user.email=ci@localhost commit -q -m "scratch copy for ci_dvc_repro"

# The copy's parameters: small library, short training, one split kind.
set_params() {  # set_params KEY=YAML_VALUE...: edit params.yaml (only the keys named change)
  "$python" - "$@" <<'EOF'
import sys
import yaml

params = yaml.safe_load(open("params.yaml", encoding="utf-8"))
for assignment in sys.argv[1:]:
    key, value = assignment.split("=", 1)
    *parents, leaf = key.split(".")
    node = params
    for name in parents:
        node = node[name]
    node[leaf] = yaml.safe_load(value)
open("params.yaml", "w", encoding="utf-8").write(yaml.safe_dump(params, sort_keys=False))
EOF
}
set_params library.demo_size=small train.epochs=2 "train.split_kinds=[song]"
git commit -q -am "ci: small demo library, 2 epochs, song split"

# This copy's code and folders; the checkout's environments and model files.
unset DAGSTER_HOME RECONET_PROJECT_ROOT RECONET_DATA_DIR RECONET_REPORTS_DIR RECONET_LIBRARY RECONET_PARAMS \
  RECONET_STEMS_DIR MLFLOW_TRACKING_URI
export PYTHONPATH=$project   # imports this copy's ml/, assets/, pipeline/ (not the editable install's)
export PATH=$checkout/.venv/bin:$PATH
export RECONET_MODELS_DIR=$checkout/models
export RECONET_SPLEETER_PYTHON=$checkout/.venv-spleeter/bin/python
export DAGSTER_DISABLE_TELEMETRY=1

mapfile -t stages < <(dvc stage list --name-only)
[ "${#stages[@]}" -gt 0 ] || fail "dvc stage list shows no stages"

ran() { grep -oP "^Running stage '\K[^']+" "$1" | sort -u || true; }          # stages a repro ran
skipped() { grep -oP "^Stage '\K[^']+(?=' didn't change, skipping)" "$1" | sort -u || true; }
status_clean() {  # dvc status --json is {} when every stage and output is up to date
  local out
  out=$(dvc status --json) || fail "dvc status failed"
  "$python" -c 'import json, sys; sys.exit(0 if json.loads(sys.argv[1]) == {} else 1)' "$out" ||
    fail "$1: dvc status is not clean: $out"
}
same() {  # same WHAT EXPECTED ACTUAL (newline-separated sorted lists)
  [ "$2" = "$3" ] || fail "$1: expected [$(echo $2)], got [$(echo $3)]"
}

step "dvc repro (every stage runs)"
dvc repro 2>&1 | tee "$scratch/repro1.log" || fail "the first dvc repro failed"
same "stages run by the first dvc repro" "$(printf '%s\n' "${stages[@]}" | sort)" "$(ran "$scratch/repro1.log")"
status_clean "after the first dvc repro"
for f in reports/metrics.json reports/evaluation/song/top_k.csv reports/evaluation/song/confusion.png; do
  [ -s "$f" ] || fail "$f was not written"
done
dvc metrics show

step "dvc repro again (nothing runs)"
dvc repro 2>&1 | tee "$scratch/repro2.log" || fail "the second dvc repro failed"
same "stages run by the second dvc repro" "" "$(ran "$scratch/repro2.log")"
same "stages skipped by the second dvc repro" "$(printf '%s\n' "${stages[@]}" | sort)" "$(skipped "$scratch/repro2.log")"
grep -q "Data and pipelines are up to date" "$scratch/repro2.log" || fail "the second dvc repro did not say it was up to date"
status_clean "after the second dvc repro"

step "features.hop_length 512 -> 1024: dvc repro runs features, model, evaluation and predictions only"
set_params features.hop_length=1024
changed=$(dvc status --json)
echo "dvc status: $changed"
# --wait-for-lock: this repro waits for the repository lock rather than failing, while the
# concurrent one below (without it) must be refused
dvc --wait-for-lock repro >"$scratch/repro3.log" 2>&1 &
repro=$!
for _ in $(seq 600); do
  grep -q "^Running stage 'features'" "$scratch/repro3.log" && break
  kill -0 "$repro" 2>/dev/null || break
  sleep 0.5
done
grep -q "^Running stage 'features'" "$scratch/repro3.log" || { cat "$scratch/repro3.log"; fail "features did not start"; }
step "a second dvc repro while the first runs: refused by DVC's lock"
if dvc repro >"$scratch/concurrent.log" 2>&1; then
  cat "$scratch/concurrent.log"
  fail "a concurrent dvc repro succeeded"
fi
cat "$scratch/concurrent.log"
grep -Eq "is busy, it is being blocked by|Unable to acquire lock" "$scratch/concurrent.log" ||
  fail "the concurrent dvc repro failed for another reason than the lock"
wait "$repro" || { cat "$scratch/repro3.log"; fail "dvc repro after the feature change failed"; }
cat "$scratch/repro3.log"
same "stages run after the feature change" "$(printf '%s\n' evaluation features model predictions)" "$(ran "$scratch/repro3.log")"
same "stages skipped after the feature change" \
  "$(printf '%s\n' "${stages[@]}" | grep -vxE 'features|model|evaluation|predictions' | sort)" "$(skipped "$scratch/repro3.log")"
status_clean "after the feature change"

step "dvc push to the default remote; dvc pull into an empty workspace and cache"
dvc push
remote=$scratch/reconet-dvc-remote
[ -d "$remote/files" ] || fail "dvc push wrote nothing to $remote"
rm -rf data reports/evaluation reports/eda .dvc/cache
dvc pull
status_clean "after dvc pull"
[ -s data/tables/clean_tracks.parquet ] && [ -d data/models/song ] || fail "dvc pull did not restore the outputs"

step "passed in $((SECONDS - started)) s"
