#!/usr/bin/env bash
# Issue 5, section 7: relearn_cv.py on SOD for every base and both backbones, then one summary table.
#   bash benchmarks/relearn_cv_sod.sh [JOBS]     (JOBS parallel runs, default 1; each uses one torch thread)
# DSS and Amulet run from their published maps, which exist for SOD only: BSDS500-pool images have no DSS or Amulet
# map, so those two bases cannot use the extra pool (relearn_cv.py would list 200 base failures and use none).
# U2-Net-p and MB+ compute maps on any image, so they use BSDS500-pool as the extra pool.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${RELEARN_DATA:-../shared/data}
OUT=benchmarks/results
JOBS=${1:-1}
PY=${PYTHON:-python}
CORES=$(nproc)  # before OMP_NUM_THREADS=1, which nproc reports instead
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

run() {  # one relearn_cv.py run per line of stdin, JOBS at a time
  xargs -P "$JOBS" -I{} sh -c "$PY benchmarks/relearn_cv.py --data $DATA/SOD --folds 5 --seed 0 --no-ablation \\
    --machine \"$CORES-core CPU, $JOBS runs at a time\" {} > /dev/null"
}
# first one run per pool (SOD alone; SOD + BSDS500-pool): they fill the correspondence cache the others reuse
printf '%s\n' "--base dss --maps $DATA/SOD/maps/DSS --backbone handcrafted --out $OUT/relearn_cv_dss_handcrafted.json" \
  "--base u2netp --pool $DATA/BSDS500-pool --backbone handcrafted --out $OUT/relearn_cv_u2netp_handcrafted.json" | run
runs=("--base mbplus --pool $DATA/BSDS500-pool --backbone handcrafted --out $OUT/relearn_cv_mbplus_handcrafted.json"
      "--base amulet --maps $DATA/SOD/maps/Amulet --backbone handcrafted --out $OUT/relearn_cv_amulet_handcrafted.json"
      "--base dss --maps $DATA/SOD/maps/DSS --backbone vgg16-hed --out $OUT/relearn_cv_dss_vgg16-hed.json"
      "--base amulet --maps $DATA/SOD/maps/Amulet --backbone vgg16-hed --out $OUT/relearn_cv_amulet_vgg16-hed.json"
      "--base u2netp --pool $DATA/BSDS500-pool --backbone vgg16-hed --out $OUT/relearn_cv_u2netp_vgg16-hed.json"
      "--base mbplus --pool $DATA/BSDS500-pool --backbone vgg16-hed --out $OUT/relearn_cv_mbplus_vgg16-hed.json")
printf '%s\n' "${runs[@]}" | run
# the paper's Fig. 11 ablation once, on the base that can use the extra pool (C5 and C6 enlarge it)
$PY benchmarks/relearn_cv.py --data "$DATA/SOD" --base u2netp --pool "$DATA/BSDS500-pool" --folds 5 --seed 0 \
  --machine "$CORES-core CPU, alone" --out $OUT/relearn_cv_u2netp_ablation.json > /dev/null
$PY benchmarks/relearn_cv_summary.py $OUT/relearn_cv_{dss,amulet,u2netp,mbplus}_{handcrafted,vgg16-hed}.json \
  --out $OUT/relearn_cv_summary.json
