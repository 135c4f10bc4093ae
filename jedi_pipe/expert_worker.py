"""One expert in a fresh Python process (trainer.expert_in_child starts it with `main(JOB)`).

JOB is a pickle of (config dict, dataset index, torch threads, loader backend, seconds between
progress lines); the result of trainer.train_expert, or the exception it raised, is pickled to
JOB + ".out"; progress lines go to stdout, which the parent logs. trainer.pretrain starts these
to train experts side by side on the CPU. A fresh interpreter, not a fork (the parent's OpenMP
and DALI threads do not survive one) and not multiprocessing's spawn, which re-runs the caller's
main script in every child: a script without the `if __name__ == "__main__":` guard would start
over there.
"""
from __future__ import annotations

import os
import pickle
import threading
import time
import traceback


def exit_with_parent() -> None:
    """Stop when the parent goes (killed, or gone without a word): an orphan would keep writing its run folder."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def main(job: str) -> None:
    exit_with_parent()
    with open(job, "rb") as f:
        config, i, threads, backend, every = pickle.load(f)
    try:
        import torch

        from . import shards
        from .config import load_config
        from .trainer import train_expert
        torch.set_num_threads(threads)
        cfg = load_config(data=config)
        d = cfg.datasets[i]
        say = lambda m: print(m, flush=True)   # noqa: E731  (progress: the parent logs our stdout as its own lines)
        result = ("ok", train_expert(cfg, i, {d.name: shards.open_shards(d.shards)}, torch.device("cpu"), backend,
                                     say=say, say_every=every))   # the parent's interval (a test's, or the default)
    except BaseException as e:   # handed to the parent, which raises it
        where = f"in the worker process of expert {config['datasets'][i]['name']}"
        if hasattr(e, "add_note"):   # Python 3.11+
            e.add_note(f"({where}:\n{traceback.format_exc()})")
        try:
            pickle.loads(pickle.dumps(e))     # both ways: an __init__ unlike its args fails only on loading
            result = ("error", e)
        except Exception:        # an exception that does not make the trip: its text
            result = ("error", RuntimeError(f"{where}: {traceback.format_exc()}"))
    with open(job + ".out.partial", "wb") as f:
        pickle.dump(result, f)
    os.replace(job + ".out.partial", job + ".out")   # a worker killed mid-write leaves no half result
