#!/usr/bin/env bash
# The whole default pipeline, SFT → RM → PPO → evaluation table → the matcher M, each stage timed: the README's first
# command, and where its wall times come from.
#
#   bash bench/pipeline.sh                 # logs and times.tsv in ckpt/pipeline/
#   PYTHON=python3 bash bench/pipeline.sh LOG_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:-ckpt/pipeline}
py=${PYTHON:-python}
export PYTHONUNBUFFERED=1
mkdir -p "$log"
: > "$log/times.tsv"
stage() {  # stage NAME COMMAND...: run it, keep its output in LOG_DIR/NAME.log, add its wall time to times.tsv
    local name=$1 t0=$SECONDS
    shift
    "$@" 2>&1 | tee "$log/$name.log"
    printf '%s\t%d\t%s\n' "$name" $((SECONDS - t0)) "$*" >> "$log/times.tsv"
}
stage sft $py train_sft.py
stage rm $py train_rm.py
stage ppo $py train_ppo.py --init ckpt/
stage eval $py generate.py --eval
stage rec $py train_rec.py
printf 'total\t%d\n' "$SECONDS" >> "$log/times.tsv"
echo; echo "wall seconds per stage ($log/times.tsv):"; cat "$log/times.tsv"
