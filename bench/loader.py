"""Loader benchmark: make the benchmark data, then run `jedi-pipe bench loader` on it.

    python bench/loader.py make-data DIR [--classes 16 --videos 12]   # sources + shards under DIR
    python bench/loader.py make-data DIR --kinetics --classes 8 --videos 8   # Kinetics-like sources
    python bench/loader.py run --shards DIR/shards --vs-raw DIR/source --json   # = jedi-pipe bench loader
    python bench/loader.py stages          # CPU cost of the DALI augmentation ops, per clip

`make-data` writes videos shaped like HMDB51 / UCF101 files (320x240, 30 fps, MPEG-4 part 2
with the XVID tag at 600 kbit/s, about the average bitrate of those sets, 3-6 s) into
`<DIR>/source/<class>/<video>.avi`, then shards them with the default settings (VP9, short side
128, 12 fps) into `<DIR>/shards` with the `folder` adapter. Results: bench/README.md.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import click

from jedi_pipe.errors import InputError, script_main
from jedi_pipe.loaders.bench import loader_command
from jedi_pipe.make_shards import make_shards
from jedi_pipe.transcode import ffmpeg_exe

# lavfi sources with motion (option strings appended to size and rate)
PATTERNS = ("testsrc2", "mandelbrot", "cellauto:rule=110", "rgbtestsrc", "smptehdbars",
            "gradients:speed=0.05", "testsrc", "sierpinski")


# Kinetics-like sources (--kinetics): H.264 in MP4, 10 s at 30 fps, frame sizes of the real
# downloads (short side 340 to 720), at about YouTube's bitrates for those sizes.
KINETICS_SIZES = (("454x340", "700k"), ("640x480", "1200k"), ("1280x720", "2500k"))


def make_source_video(path: Path, pattern: str, seconds: float, size: str = "320x240", kinetics_bitrate=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size.split("x")
    vf = f"scale={w}:{h},format=yuv420p,noise=alls=6:allf=t+u,hue=H=t/2"
    name, _, opts = pattern.partition(":")
    src = f"{name}=size={size}:rate=30" + (f":{opts}" if opts else "")
    codec = (["-c:v", "libx264", "-preset", "veryfast", "-b:v", kinetics_bitrate] if kinetics_bitrate
             else ["-c:v", "mpeg4", "-vtag", "XVID", "-b:v", "600k"])
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
                    "-t", f"{seconds:.2f}", "-vf", vf, *codec, str(path)], check=True)


@click.group()
def cli():
    """Loader benchmark helpers."""


@cli.command("make-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", default=16, show_default=True, type=click.IntRange(2))
@click.option("--videos", default=12, show_default=True, type=click.IntRange(2), help="Videos per class.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1))
@click.option("--kinetics", is_flag=True, help="Kinetics-like sources: H.264 MP4, 10 s, short side 340-720 px.")
@click.option("--overwrite", is_flag=True, help="Make DIR/source and DIR/shards again from scratch (they were "
              "made with other sizes).")
def make_data(out, classes, videos, workers, kinetics, overwrite):
    """Sources under DIR/source and their shards under DIR/shards (a rerun with the same sizes reuses both)."""
    out = Path(out)
    # the sizes the sources were made with: those of other sizes would stay beside the new and be sharded with them
    sizes, record = {"classes": classes, "videos": videos, "kinetics": kinetics}, out / "source" / ".sizes.json"
    made = json.loads(record.read_text()) if record.is_file() else None
    old = made is None and (out / "source").is_dir() and any((out / "source").iterdir())   # before the record
    if made not in (None, sizes) or old:
        if not overwrite:
            raise InputError(f"{out / 'source'} holds sources of other sizes "
                             f"({json.dumps(made) if made else 'unknown: made before sizes were recorded'}); "
                             f"--overwrite makes them again, or choose another DIR")
        shutil.rmtree(out / "source")
    (out / "source").mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(sizes))
    for c in range(classes):
        for v in range(videos):
            if kinetics:   # H.264 MP4, 10 s, a Kinetics download's frame size and bitrate
                (size, rate), ext, seconds = KINETICS_SIZES[(c + v) % len(KINETICS_SIZES)], "mp4", 10.0
            else:          # XviD AVI, 320x240, 3-6 s
                size, rate, ext, seconds = "320x240", None, "avi", 3 + (7 * c + 5 * v) % 31 / 10
            path = out / "source" / f"class{c:02d}" / f"v{v:02d}.{ext}"
            if not path.is_file():
                make_source_video(path, PATTERNS[(c + v) % len(PATTERNS)], seconds, size, rate)
    s = make_shards("folder", out / "source", out / "shards", workers=workers, labeled_fraction=0.1, progress=False,
                    overwrite=overwrite)
    click.echo(f"{out / 'shards'}: {s.counts}, {s.bytes / 1e6:.1f} MB")


@cli.command("stages")
@click.option("--height", default=128, show_default=True, help="Decoded frame size (the shards' short side).")
@click.option("--width", default=170, show_default=True)
@click.option("--frames", default=16, show_default=True)
@click.option("--size", default=112, show_default=True)
def stages(height, width, frames, size):
    """CPU ms per clip of the DALI CPU augmentation ops on decoded frames (no decode), and of
    torch's uint8 bilinear resize for comparison: where the loader's time goes besides decoding."""
    import time
    import numpy as np
    import torch
    from nvidia.dali import fn, pipeline_def, types
    batch = [np.random.default_rng(i).integers(0, 255, (frames, height, width, 3), np.uint8) for i in range(8)]

    def dali_ms(stage) -> float:
        @pipeline_def(batch_size=8, num_threads=1, device_id=None, seed=0)
        def pipe():
            return stage(fn.external_source(source=lambda: batch, batch=True, layout="FHWC"))
        p = pipe()
        p.build()
        p.run()
        t = time.process_time()
        for _ in range(10):
            p.run()
        return 1000 * (time.process_time() - t) / 80

    rrc = dict(size=[size, size], random_area=[0.25, 1.0], antialias=False)
    cmn = dict(dtype=types.FLOAT, output_layout="CFHW", mean=[110.0] * 3, std=[57.0] * 3)
    base = dali_ms(lambda x: x)
    rows = {"random_resized_crop (linear)": dali_ms(lambda x: fn.random_resized_crop(x, **rrc)) - base,
            "random_resized_crop (nearest)": dali_ms(lambda x: fn.random_resized_crop(
                x, interp_type=types.INTERP_NN, **rrc)) - base,
            "random_resized_crop (nearest up, linear down)": dali_ms(lambda x: fn.random_resized_crop(
                x, mag_filter=types.INTERP_NN, min_filter=types.INTERP_LINEAR, **rrc)) - base,
            "warp_affine (linear, 0.8x crop)": dali_ms(lambda x: fn.warp_affine(
                x, matrix=[0.8, 0, 10, 0, 0.8, 5], size=[size, size], inverse_map=True,
                interp_type=types.INTERP_LINEAR)) - base,
            "crop_mirror_normalize (float CFHW)": dali_ms(lambda x: fn.crop_mirror_normalize(
                x, crop=[size, size], **cmn)) - base,
            "crop_mirror_normalize (uint8 CFHW, no normalise)": dali_ms(lambda x: fn.crop_mirror_normalize(
                x, crop=[size, size], dtype=types.UINT8, output_layout="CFHW")) - base}
    torch.set_num_threads(1)
    x = torch.from_numpy(batch[0]).permute(0, 3, 1, 2)      # channels-last uint8, torch's fast path
    t = time.process_time()
    for _ in range(20):
        torch.nn.functional.interpolate(x[:, :, :height * 3 // 4, :width * 3 // 4], size=(size, size),
                                        mode="bilinear", antialias=False)
    rows["torch interpolate (uint8 bilinear)"] = 1000 * (time.process_time() - t) / 20
    for name, ms in rows.items():
        click.echo(f"{name:48s} {ms:6.2f} CPU ms / clip of {frames}x{height}x{width} -> {size}x{size}")


cli.add_command(loader_command, "run")

if __name__ == "__main__":
    script_main(cli)
