"""Train a plain video classifier on a shard folder's labeled clips and test it: no JEDI trainer.

The shards are a product of their own: any PyTorch model reads them through jedi_pipe.make_loaders
(training batches) and jedi_pipe.make_eval_loader (test views). This script trains R3D-18 with
plain SGD and cross-entropy on the `labeled` role and reports top-1 on `test`.

    python examples/train_classifier.py --shards shards/hmdb51 --steps 2000 --frames 16 --stride 2 --size 112

The model is jedi-pipe's registered `r3d_18`, torchvision's R3D-18 module for module (its
Kinetics-400 file loads by name). torchvision itself is not a dependency (its wheels pin a CUDA
torch); where it is installed, `torchvision.models.video.r3d_18(num_classes=...)` is a drop-in:
same input [B, 3, T, H, W], same output.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import jedi_pipe
from jedi_pipe.models import build


def train_and_test(shards: str, model: str = "r3d_18", steps: int = 1000, batch_size: int = 8, frames: int = 16,
                   stride: int = 2, size: int = 112, lr: float = 0.01, threads: int = 2, log=print) -> dict:
    """Train on the labeled role for `steps` steps, then return test top-1 (%) and the clip count."""
    classes = jedi_pipe.open_shards(shards).classes
    clip = {"frames": frames, "stride": stride, "size": size}
    # the loaders put batches on the GPU where DALI decodes there, else on the CPU: the model goes with them
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build(model, len(classes)).to(device)   # or torchvision.models.video.r3d_18(num_classes=len(classes))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    # labeled clips only (unlabeled_ratio=0): batches {dataset name: {"x", "y", "id"}}
    loader = jedi_pipe.make_loaders([{"shards": shards, "name": "data"}], clip=clip, batch_size=batch_size,
                                    unlabeled_ratio=0, threads=threads)
    net.train()
    for step, batch in zip(range(steps), loader):
        x, y = batch["data"]["x"].to(device), batch["data"]["y"].to(device)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}")

    # every test clip once; x is [B, views, 3, T, H, W]: average the views' probabilities
    net.eval()
    hits = n = 0
    with torch.no_grad():
        for b in jedi_pipe.make_eval_loader(shards, clip, batch_size=batch_size, threads=threads):
            x, y = b["x"].to(device), b["y"].to(device)
            B, V = x.shape[:2]
            probs = net(x.flatten(0, 1)).softmax(-1).view(B, V, -1).mean(1)
            hits += (probs.argmax(1) == y).sum().item()
            n += B
    top1 = 100.0 * hits / n
    log(f"test top-1 {top1:.1f}% on {n} clips ({len(classes)} classes)")
    return {"top1": top1, "n": n}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, help="a shard folder (jedi-pipe shard)")
    ap.add_argument("--model", default="r3d_18", help="a registered model (jedi_pipe.models.list_models())")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    train_and_test(a.shards, a.model, a.steps, a.batch_size, a.frames, a.stride, a.size, a.lr, a.threads)
