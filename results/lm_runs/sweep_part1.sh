#!/bin/bash
cd /work/main && source .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
OUT=/work/main/results/lm_runs
COMMON="--n-samples 32 --seqlen 256 --eval-windows 32 --eval-seqlen 512 --tasks piqa,arc_easy --limit 200 --threads 1 --seed 0 --output-dir $OUT --no-progress"
for frac in 0.5 0.3; do
 for m in osscar ziplm mp+ mp; do
  extra=""
  [ "$frac" = "0.5" ] && extra="--latency 1x128 --latency 1x512 --latency 8x256"
  [ "$frac" = "0.5" ] && [ "$m" = "osscar" ] && extra="$extra --dense"
  echo "=== $m $frac $(date)"
  /usr/bin/time -v python -m osscar lm --method $m --head-fraction $frac --neuron-fraction $frac $COMMON $extra --name smollm2_${m}_${frac} 2>&1 | grep -v "it/s\|Warn" | tail -40
 done
done
echo DONE $(date)
