#!/usr/bin/env bash
# relearn_cv.py with the default configuration (registry.yaml's relearn: section) for every base on SOD and for MB+
# and U2-Net-p on WeizmannHorse-dev (the other horses are the pool), with the ablation variants of each, the levers
# tried beside the default (benchmarks/configs/*.yaml: the re-learner's objective, the pair filter, the selection, the
# bootstrap guard, no knowledge view or three or a choice of them, no sharpening; GrabCut as extra training data), then one table: benchmarks/results/relearn_ablation.md.
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
DSS="$SOD --base dss --maps $DATA/SOD/maps/DSS"
LEVER=benchmarks/configs
printf '%s\n' \
  "$DSS --out $OUT/relearn_cv_dss_u2netp.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --out $OUT/relearn_cv_amulet_u2netp.json" \
  "$SOD --base u2netp --out $OUT/relearn_cv_u2netp_u2netp.json" \
  "$SOD --base mbplus --out $OUT/relearn_cv_mbplus_u2netp.json" \
  "$HORSES --base mbplus --out $OUT/relearn_cv_horses_mbplus_u2netp.json" \
  "$HORSES --base u2netp --out $OUT/relearn_cv_horses_u2netp_u2netp.json" \
  "$DSS --config $LEVER/loss_l1.yaml --out $OUT/relearn_cv_dss_u2netp_loss_l1.json" \
  "$DSS --config $LEVER/loss_f_mae.yaml --out $OUT/relearn_cv_dss_u2netp_loss_f_mae.json" \
  "$DSS --config $LEVER/select_max_f.yaml --out $OUT/relearn_cv_dss_u2netp_select_max_f.json" \
  "$DSS --config $LEVER/no_filter.yaml --out $OUT/relearn_cv_dss_u2netp_no_filter.json" \
  "$DSS --config $LEVER/no_views.yaml --out $OUT/relearn_cv_dss_u2netp_no_views.json" \
  "$DSS --config $LEVER/confidence_0.yaml --out $OUT/relearn_cv_dss_u2netp_confidence_0.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --config $LEVER/no_views.yaml --out $OUT/relearn_cv_amulet_u2netp_no_views.json" \
  "$SOD --base mbplus --config $LEVER/no_views.yaml --out $OUT/relearn_cv_mbplus_u2netp_no_views.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --config $LEVER/confidence_0.yaml --out $OUT/relearn_cv_amulet_u2netp_confidence_0.json" \
  "$SOD --base mbplus --config $LEVER/confidence_0.yaml --out $OUT/relearn_cv_mbplus_u2netp_confidence_0.json" \
  "$SOD --base u2netp --config $LEVER/loss_f_mae.yaml --out $OUT/relearn_cv_u2netp_u2netp_loss_f_mae.json" \
  "$SOD --base u2netp --config $LEVER/confidence_0.yaml --out $OUT/relearn_cv_u2netp_u2netp_confidence_0.json" \
  "$SOD --base u2netp --extra-train $DATA/GrabCut --out $OUT/relearn_cv_u2netp_u2netp_grabcut.json" \
  "$SOD --base u2netp --config $LEVER/no_filter.yaml --out $OUT/relearn_cv_u2netp_u2netp_no_filter.json" \
  "$SOD --base u2netp --config $LEVER/no_views.yaml --out $OUT/relearn_cv_u2netp_u2netp_no_views.json" \
  "$HORSES --base mbplus --config $LEVER/no_views.yaml --components 'no correspondence' --components 'label transfer' --out $OUT/relearn_cv_horses_mbplus_u2netp_no_views.json" \
  "$HORSES --base u2netp --config $LEVER/no_views.yaml --components 'no correspondence' --components 'fusion only' --out $OUT/relearn_cv_horses_u2netp_u2netp_no_views.json" \
  "$HORSES --base mbplus --config $LEVER/confidence_0.yaml --out $OUT/relearn_cv_horses_mbplus_u2netp_confidence_0.json" \
  "$HORSES --base u2netp --config $LEVER/confidence_0.yaml --out $OUT/relearn_cv_horses_u2netp_u2netp_confidence_0.json" \
  "$DSS --config $LEVER/sharpness_1.yaml --out $OUT/relearn_cv_dss_u2netp_sharpness_1.json" \
  "$DSS --config $LEVER/views_scales.yaml --out $OUT/relearn_cv_dss_u2netp_views_scales.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --config $LEVER/views_scales.yaml --out $OUT/relearn_cv_amulet_u2netp_views_scales.json" \
  "$DSS --config $LEVER/view_choice.yaml --out $OUT/relearn_cv_dss_u2netp_view_choice.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --config $LEVER/view_choice.yaml --out $OUT/relearn_cv_amulet_u2netp_view_choice.json" \
  "$SOD --base amulet --maps $DATA/SOD/maps/Amulet --config $LEVER/sharpness_1.yaml --out $OUT/relearn_cv_amulet_u2netp_sharpness_1.json" \
  "$SOD --base u2netp --config $LEVER/sharpness_1.yaml --out $OUT/relearn_cv_u2netp_u2netp_sharpness_1.json" \
  | run
$PY benchmarks/relearn_cv_summary.py $OUT/relearn_cv_{dss,amulet,u2netp,mbplus}_u2netp.json \
  $OUT/relearn_cv_horses_{mbplus,u2netp}_u2netp.json $OUT/relearn_cv_horses_*_no_views.json $OUT/relearn_cv_horses_*_confidence_0.json $OUT/relearn_cv_dss_u2netp_*.json $OUT/relearn_cv_amulet_u2netp_*.json \
  $OUT/relearn_cv_u2netp_u2netp_*.json $OUT/relearn_cv_mbplus_u2netp_*.json --out $OUT/relearn_ablation.json
