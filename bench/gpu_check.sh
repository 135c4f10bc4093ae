#!/usr/bin/env bash
# Everything docs/scale.md ("The real job at real size") wants measured on a GPU, in one script, sized
# for about 8 minutes on one H200 with 16 cores (an estimate: it has not run yet). Every command runs under a
# timeout of its own or what is left of BUDGET seconds (540 by default), whichever is less, so one device
# call of 600 s holds it; what is skipped says so. Needs the project
# installed (`pip install -e .` with a CUDA torch and nvidia-dali-cuda120; a device machine without network
# takes them as carried wheels). Run from anywhere:
#   OUT=/tmp/gpu-check bash bench/gpu_check.sh
# Every result is under $OUT: log.txt (all output), JSON lines and metrics files; a step that fails is
# logged and the rest goes on.
#  1. the joint step of train/jedi.yaml alone (bench/scale_step.py, random clips at 16x112^2): peak memory
#     and step time with the shipped settings (micro_batch_size 2, bf16), next to `jedi-pipe plan`'s
#     prediction; then compile off, a bigger micro-batch, and checkpointing over the whole step
#  2. synthetic 128 px VP9 shards of the four datasets; NVDEC ('mixed') vs CPU decode of the same eval
#     clips (largest and mean difference), and the loader's clips/s on both paths at the real clip size,
#     each against a per-video PyAV loader and the bare decode timed in the same run (vs_raw, vs_decode)
#  3. `jedi-pipe train --config train/jedi.yaml` on those shards for about 32 joint steps: clips/s and
#     input wait from metrics.jsonl
#  4. torchrun: DDP over all GPUs when there are several; with one GPU, 2 processes on it (NCCL may
#     refuse a GPU shared by two ranks: the error is the result)
cd "$(dirname "$0")/.." || exit 1     # the repository root: train/, preprocess/ and bench/ are read from it
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1    # the whole log comes back with $OUT
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
JP="python3 -m jedi_pipe.cli"
NGPU=$(nvidia-smi -L | wc -l)
nvidia-smi -L
python3 -c "import jedi_pipe, nvidia.dali, torch; print(nvidia.dali.__version__, torch.__version__, torch.cuda.is_available())" \
    || { echo "jedi_pipe, DALI or torch do not import: nothing to measure"; exit 1; }
T0=$SECONDS
BUDGET=${BUDGET:-540}
: > "$OUT/step.jsonl"                  # this run's steps only
part() {   # part NAME: false (and says so) once the budget is spent, so a device call ends inside its limit
  if [ $((SECONDS - T0)) -ge "$BUDGET" ]; then echo "over the ${BUDGET} s budget at $((SECONDS - T0)) s: skipping $1"; return 1; fi
}
within() {   # within CAP COMMAND...: COMMAND under a timeout of CAP s or what is left of the budget, if less
  local cap=$1 left=$((BUDGET - (SECONDS - T0))); shift
  if [ "$left" -le 0 ]; then echo "over the ${BUDGET} s budget: skipping $*"; return 124; fi
  timeout "$((left < cap ? left : cap))" "$@"
}

# -- 1. the step alone (~2.5 min; the first two steps of each run build cuDNN plans, untimed)
part "1. the step" && {
within 180 $JP plan --config train/jedi.yaml --gpu-mem 141 | tee "$OUT/plan.txt"   # measures on the CPU: minutes
step() { within 150 python3 bench/scale_step.py --config train/jedi.yaml --steps 5 "$@" | tee -a "$OUT/step.jsonl"; }
step --set compile=false
step --set compile=true
step --set compile=false --set jedi.micro_batch_size=4
step --set compile=false --set jedi.micro_batch_size=0 --set jedi.grad_checkpointing=true
echo "step checks done at $((SECONDS - T0)) s"
}

# -- 2. 128 px VP9 shards (12 videos per class; half the training videos labeled, so every dataset has
#       at least 16 labeled clips for a step of train/jedi.yaml); decode on the GPU vs the CPU (~1.5 min)
S=$OUT/shards
part "2. shards and decode" && {
within 120 $JP synth --out "$OUT/synth" --videos-per-class 12 --seed 0 --overwrite   # a rerun keeps them
for ds in hmdb51 ucf101 kinetics400 ssv2; do
  within 120 $JP shard --dataset $ds --root "$OUT/synth/$ds" --out "$S/$ds" --recipe preprocess/$ds.yaml \
      --labeled-fraction 0.5 --workers "$(nproc)"
done
within 60 python3 bench/gpu_dump_eval.py "$S/ssv2" "$OUT/gpu_ssv2.npz"
CUDA_VISIBLE_DEVICES= within 60 python3 bench/gpu_dump_eval.py "$S/ssv2" "$OUT/cpu_ssv2.npz"
python3 -c "
import numpy as np; g=np.load('$OUT/gpu_ssv2.npz'); c=np.load('$OUT/cpu_ssv2.npz')
assert (g['id']==c['id']).all(); d=np.abs(g['x']-c['x']); print('nvdec vs cpu eval clips: max', d.max(), 'mean', d.mean())"
# both paths with the same threads, each with its same-run baselines (ratios, not absolute clips/s)
LOADER="$JP bench loader --shards $S/kinetics400 --batch-size 16 --frames 16 --size 112 --threads 8 --clips 256 --json --vs-raw $OUT/synth/kinetics400"
within 120 $LOADER | tee "$OUT/loader_mixed.txt"
CUDA_VISIBLE_DEVICES= within 120 $LOADER | tee "$OUT/loader_cpu.txt"
echo "shards and decode done at $((SECONDS - T0)) s"
}

# -- 3. the real config on the shards: 1 expert epoch, 8 joint epochs (~4 steps each here, Kinetics-400's
#       ~50 labeled clips / 16), evaluation only at the end; compile off (step 1 measured it) (~2 min)
part "3. training" && [ -d "$S/ssv2" ] && {
sed -e "s#shards: shards/#shards: $S/#; s#^out: .*#out: $OUT/run#" train/jedi.yaml > "$OUT/jedi.yaml"
within 240 $JP train --config "$OUT/jedi.yaml" --overwrite --set pretrain.epochs=1 --set pretrain.warmup_steps=1 \
    --set jedi.epochs=8 --set jedi.warmup_steps=5 --set eval_every=100000 --set checkpoint_every=100000 \
    --set compile=false
python3 -c "
import json; rows=[json.loads(l) for l in open('$OUT/run/metrics.jsonl') if '\"clips_per_s\"' in l]
for r in rows: print('step', r['step'], 'clips/s', round(r['clips_per_s'], 1), 'input wait', round(r['input_wait'], 3))"
echo "training done at $((SECONDS - T0)) s"
}

# -- 4. DDP through torchrun (~40 s)
part "4. torchrun" && if [ "$NGPU" -ge 2 ]; then
  within 120 torchrun --standalone --nproc-per-node "$NGPU" bench/scale_step.py --config train/jedi.yaml \
      --set compile=false --steps 4 | tee -a "$OUT/step.jsonl"
else
  within 120 torchrun --standalone --nproc-per-node 2 bench/scale_step.py --config train/jedi.yaml --same-gpu \
      --set compile=false --steps 4 | tee -a "$OUT/step.jsonl"
fi
echo "all done in $((SECONDS - T0)) s"
