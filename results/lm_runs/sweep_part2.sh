#!/bin/bash
cd /work/main && source .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
OUT=/work/main/results/lm_runs
COMMON="--n-samples 32 --seqlen 256 --eval-windows 32 --eval-seqlen 512 --tasks piqa,arc_easy --limit 200 --threads 1 --seed 0 --output-dir $OUT --no-progress"
for spec in "ziplm 0.5" "mp+ 0.5" "mp 0.5" "osscar 0.3" "ziplm 0.3" "mp+ 0.3" "mp 0.3"; do
  set -- $spec; m=$1; frac=$2
  echo "=== $m $frac $(date)"
  /usr/bin/time -v python -m osscar lm --method $m --head-fraction $frac --neuron-fraction $frac $COMMON --name smollm2_${m}_${frac} 2>&1 | grep -v "it/s\|Warn" | tail -40
done
echo DONE $(date)
