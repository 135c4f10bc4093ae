"""bench/gpu_check.sh helper: eval batches of the DALI loader (GPU or CPU path, whichever this
process gets) as an npz, and the shapes and devices of one training step.

    python bench/gpu_dump_eval.py SHARD_DIR OUT.npz
"""
import sys

import numpy as np

from jedi_pipe.loaders import make_eval_loader, make_loaders
from jedi_pipe.loaders.dali import decode_device
from jedi_pipe.shards import open_shards

if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    raise SystemExit(0)
if len(sys.argv) != 3:
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
shards, out = sys.argv[1], sys.argv[2]
print("decode device:", decode_device(open_shards(shards)))
xs, ids = [], []
for b in make_eval_loader(shards, {"frames": 8, "stride": 1, "size": 32}, batch_size=16, backend="dali"):
    xs.append(b["x"].float().cpu().numpy())
    ids.append(b["id"].numpy())
    dev = b["x"].device
x, i = np.concatenate(xs), np.concatenate(ids)
print("eval:", x.shape, "on", dev, "ids", len(set(i.tolist())))
np.savez(out, x=x[np.argsort(i)], id=np.sort(i))
tl = make_loaders([{"shards": shards}], {"frames": 8, "stride": 1, "size": 32}, batch_size=8, backend="dali")
b = next(iter(tl))
name = next(iter(b))
print("train:", {k: (tuple(v.shape), str(v.device), str(v.dtype)) for k, v in b[name].items()})
