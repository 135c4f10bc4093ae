#!/usr/bin/env bash
# GPU checks: DALI 'mixed' decode vs the CPU path on the same clips, the loader benchmark on GPU and
# CPU, and the trainer on CUDA (bf16, channels_last_3d, then torch.compile). Needs a GPU, DALI
# and shard folders made by `jedi-pipe demo` (SHARDS=jedi-demo/shards) or `jedi-pipe shard`.
#   SHARDS=jedi-demo/shards OUT=/tmp/gpu bash bench/gpu_check.sh
set -x
S=${SHARDS:-jedi-demo/shards}; OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import nvidia.dali, torch; print(nvidia.dali.__version__, torch.__version__, torch.cuda.is_available())"
python3 bench/gpu_dump_eval.py "$S/ssv2" "$OUT/gpu_ssv2.npz"
CUDA_VISIBLE_DEVICES= python3 bench/gpu_dump_eval.py "$S/ssv2" "$OUT/cpu_ssv2.npz"
python3 -c "
import numpy as np; g=np.load('$OUT/gpu_ssv2.npz'); c=np.load('$OUT/cpu_ssv2.npz')
assert (g['id']==c['id']).all(); d=np.abs(g['x']-c['x']); print('gpu vs cpu eval clips: max', d.max(), 'mean', d.mean())"
timeout 300 jedi-pipe bench loader --shards "$S/kinetics400" --batch-size 16 --frames 16 --size 112 --rounds 3 --json
CUDA_VISIBLE_DEVICES= timeout 300 jedi-pipe bench loader --shards "$S/kinetics400" --batch-size 16 --frames 16 --size 112 --threads "$(nproc)" --rounds 3 --json
sed -e "s#jedi-demo/shards#$S#; s#jedi-demo/run#$OUT/run#" jedi_pipe/demo.yaml > "$OUT/gpu.yaml"
time timeout 600 jedi-pipe train --config "$OUT/gpu.yaml" --set eval_every=60
timeout 600 jedi-pipe train --config "$OUT/gpu.yaml" --set out="$OUT/run-compiled" --set compile=true --set jedi.epochs=4 --set pretrain.epochs=5
