#!/usr/bin/env bash
# One suite task over seeds 0, 1 and 2 side by side: the first FLOPs constraint of seed 0 alone (it fine-tunes the
# task's model, which the others then load from the cache), then one process per seed. A GPU is far from busy with
# one MiniLM process, so three finish in about the time of one. Each seed resumes from $WORK/s<seed>, so a second call
# goes on where the first stopped; all rows are gathered into $WORK/suite.jsonl.
# Usage: bash benchmarks/gpu/seeds.sh SECONDS   (env: TASK=squad DEVICE=cuda DATA=.carry/data PY=python3 THREADS=5
#        WORK=/tmp/devbench CONSTRAINTS="0.4 0.5 0.6 0.7 0.8" METHODS="paper refit-resplit", EVAL_BATCH=256)
set -u
LIMIT=${1:?seconds}
TASK=${TASK:-squad} DEVICE=${DEVICE:-cuda} DATA=${DATA:-.carry/data} PY=${PY:-python3} THREADS=${THREADS:-5}
WORK=${WORK:-/tmp/devbench} CONSTRAINTS=${CONSTRAINTS:-0.4 0.5 0.6 0.7 0.8} METHODS=${METHODS:-paper refit-resplit}
END=$(( $(date +%s) + LIMIT ))
left() { local s=$(( END - $(date +%s) )); echo $(( s > 1 ? s : 1 )); }  # never 0: timeout 0 means no limit
suite() {  # seed, seconds, constraints...
  local seed=$1 seconds=$2; shift 2
  timeout "$seconds" $PY benchmarks/suite.py --device "$DEVICE" --threads "$THREADS" --eval-batch-size "${EVAL_BATCH:-256}" \
    --data-dir "$DATA" --tasks "$TASK" --seeds "$seed" --constraints "$@" --methods $METHODS --resume \
    --output "$WORK/s$seed" --workdir "$WORK/work$seed"
}
first=${CONSTRAINTS%% *}
suite 0 "$(left)" "$first" > "$WORK.s0-first.log" 2>&1 || { cat "$WORK.s0-first.log"; exit 1; }
echo "[seeds] seed 0 at FLOPs $first done (the model is cached)"
for seed in 0 1 2; do
  suite "$seed" "$(left)" $CONSTRAINTS > "$WORK.s$seed.log" 2>&1 &
done
wait
for seed in 0 1 2; do grep -h "C=" "$WORK.s$seed.log" | sed "s/^/[seed $seed] /"; done
cat "$WORK"/s*/results/suite.jsonl > "$WORK/suite.jsonl"
echo "[seeds] $(grep -c '"kind": "method"' "$WORK/suite.jsonl") method runs in $WORK/suite.jsonl"
