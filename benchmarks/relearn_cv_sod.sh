#!/usr/bin/env bash
# relearn_cv.py with the default configuration (registry.yaml's relearn: section) for every base on SOD and for MB+
# and U2-Net-p on WeizmannHorse-dev (the other horses are the pool), with the ablation variants of each, then one
# table: benchmarks/results/relearn_ablation.md.
#   bash benchmarks/relearn_cv_sod.sh [JOBS]     (JOBS parallel runs, default 1; each uses one torch thread)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${RELEARN_DATA:-../shared/data}
OUT=benchmarks/results
JOBS=${1:-1}
PY=${PYTHON:-python}
CORES=$(nproc)  # before OMP_NUM_THREADS=1, which nproc reports instead
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

run() {  # one relearn_cv.py run per line of stdin, JOBS at a time
  xargs -P "$JOBS" -I{} sh -c "$PY benchmarks/relearn_cv.py --folds 5 --seed 0 --no-ablation \\
    --machine \"$CORES-core CPU, $JOBS runs at a time\" {} > /dev/null"
}
SOD="--data $DATA/SOD"
HORSES="--data $DATA/WeizmannHorse-dev"
printf '%s\n' \
  "$SOD --base dss --maps $DATA/SOD/maps/DSS --components C1 --components C6 --components 'paper join' --components 'fusion only' --out $OUT/relearn_cv_dss_u2netp.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --out $OUT/relearn_cv_amulet_u2netp.json" \
  "$SOD --base u2netp --out $OUT/relearn_cv_u2netp_u2netp.json" \
  "$SOD --base mbplus --out $OUT/relearn_cv_mbplus_u2netp.json" \
  "$HORSES --base mbplus --components 'no correspondence' --components 'label transfer' --out $OUT/relearn_cv_horses_mbplus_u2netp.json" \
  "$HORSES --base u2netp --components 'no correspondence' --components 'fusion only' --out $OUT/relearn_cv_horses_u2netp_u2netp.json" \
  | run
$PY benchmarks/relearn_cv_summary.py $OUT/relearn_cv_{dss,amulet,u2netp,mbplus}_u2netp.json \
  $OUT/relearn_cv_horses_{mbplus,u2netp}_u2netp.json --out $OUT/relearn_ablation.json
