"""One expert in a fresh Python process: `python -m jedi_pipe.expert_worker JOB`.

JOB is a pickle of (config dict, dataset index, torch threads); the result of
trainer.train_expert, or the exception it raised, is pickled to JOB + ".out". trainer.pretrain
starts these to train experts side by side on the CPU. A fresh interpreter, not a fork (the
parent's OpenMP and DALI threads do not survive one) and not multiprocessing's spawn, which
re-runs the caller's main script in every child: a script without the
`if __name__ == "__main__":` guard would start over there.
"""
from __future__ import annotations

import pickle
import sys
import traceback


def main(job: str) -> None:
    with open(job, "rb") as f:
        config, i, threads = pickle.load(f)
    try:
        import torch

        from . import shards
        from .config import load_config
        from .trainer import train_expert
        torch.set_num_threads(threads)
        cfg = load_config(data=config)
        d = cfg.datasets[i]
        result = ("ok", train_expert(cfg, i, {d.name: shards.open_shards(d.shards)}, torch.device("cpu")))
    except BaseException as e:   # handed to the parent, which raises it
        e.add_note(f"(in the worker process of expert {config['datasets'][i]['name']}:\n{traceback.format_exc()})")
        try:
            pickle.dumps(e)
            result = ("error", e)
        except Exception:        # an exception that does not pickle: its text
            result = ("error", RuntimeError("".join(traceback.format_exception(e))))
    with open(job + ".out", "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
