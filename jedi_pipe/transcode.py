"""Source video -> encoded clip bytes, with ffmpeg driven through ffmpeg-python.

Sources (XviD AVI, H.264 MP4, VP9 WebM, anything ffmpeg reads) are decoded by ffmpeg, never
by DALI; the output codec is one that the loaders can decode (VP9 on both DALI paths).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

# codec name -> (container extension, ffmpeg output options). One thread per encode:
# parallelism comes from running several encodes at once, which scales better on small clips
# and keeps VP9 output deterministic.
CODECS = {
    "vp9": ("webm", {"c:v": "libvpx-vp9", "b:v": 0, "crf": 34, "deadline": "realtime",
                     "cpu-used": 8, "row-mt": 0, "pix_fmt": "yuv420p", "f": "webm"}),
    "mjpeg": ("avi", {"c:v": "mjpeg", "q:v": 4, "pix_fmt": "yuvj420p", "f": "avi"}),
    "h264": ("mp4", {"c:v": "libx264", "preset": "veryfast", "crf": 23, "pix_fmt": "yuv420p",
                     "movflags": "+faststart", "f": "mp4"}),
}


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "vp9"          # vp9 | mjpeg | h264
    fps: float = 12.0           # output frame rate (frames are resampled, not re-timed)
    short_side: int = 128       # output short side in pixels (the long side keeps the aspect, even)
    max_seconds: float = 10.0   # longer sources are cut to their first max_seconds

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {', '.join(CODECS)}")
        if self.fps <= 0 or self.short_side < 8 or self.max_seconds <= 0:
            raise ValueError(f"bad encode settings {self}: need fps > 0, short_side >= 8, max_seconds > 0")

    @property
    def ext(self) -> str:
        return CODECS[self.codec][0]

    def as_dict(self) -> dict:
        return asdict(self)


class TranscodeError(Exception):
    """A source video that cannot be turned into a clip; the message is the reason."""


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
    """A system ffmpeg when one is on PATH, else the static binary that imageio-ffmpeg ships."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_args(src: str, dst: str, settings: EncodeSettings) -> list[str]:
    """The ffmpeg command line for one transcode (also used by the throughput baseline)."""
    import ffmpeg  # ffmpeg-python
    opts = dict(CODECS[settings.codec][1])
    # fps before scale: frames are dropped/duplicated first, so scaling works on fewer frames.
    # Short side to `short_side`; the long side keeps the aspect, rounded to even for yuv420p.
    stream = (ffmpeg.input(src, t=settings.max_seconds).video
              .filter("fps", fps=settings.fps)
              .filter("scale", w=f"if(lte(iw,ih),{settings.short_side},-2)",
                      h=f"if(lte(iw,ih),-2,{settings.short_side})", flags="bilinear"))
    # bitexact: no random segment UID or encoder-version string, so equal inputs give equal bytes
    out = ffmpeg.output(stream, dst, an=None, threads=1, fflags="+bitexact", **{"flags:v": "+bitexact"}, **opts)
    return ffmpeg.compile(out.global_args("-nostdin", "-loglevel", "error"),
                          cmd=ffmpeg_exe(), overwrite_output=True)


def transcode(src: str, settings: EncodeSettings, tmp_dir: str | None = None) -> bytes:
    """Decode `src` with ffmpeg and return the encoded clip; raises TranscodeError with a reason."""
    if not os.path.isfile(src):
        raise TranscodeError("missing file")
    if os.path.getsize(src) == 0:
        raise TranscodeError("zero-byte file")
    fd, dst = tempfile.mkstemp(suffix="." + settings.ext, dir=tmp_dir)
    os.close(fd)
    try:
        proc = subprocess.run(ffmpeg_args(src, dst, settings), capture_output=True, text=True)
        if proc.returncode != 0:
            raise TranscodeError(_ffmpeg_reason(proc.stderr))
        with open(dst, "rb") as f:
            data = f.read()
    finally:
        os.unlink(dst)
    if len(data) == 0:
        raise TranscodeError("ffmpeg wrote no output (no decodable video frames)")
    return data


def _ffmpeg_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    if any("does not contain any stream" in ln or "matches no streams" in ln for ln in lines):
        return "no video stream"
    if any("Invalid data found when processing input" in ln for ln in lines):
        return "not a video (ffmpeg: invalid data found when processing input)"
    return "ffmpeg failed: " + (lines[-1] if lines else "no message")


@dataclass(frozen=True)
class ClipInfo:
    frames: int
    fps: float
    width: int
    height: int


def probe_clip(data: bytes) -> ClipInfo:
    """Frame count, rate and size of encoded clip bytes, by demuxing (no decode) with PyAV."""
    import io
    import av
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        # Packets, not stream.frames: WebM/AVI written to a file may lack a reliable count,
        # and one packet is one shown frame for VP9 (superframes), MJPEG and H.264 alike.
        frames = sum(1 for p in container.demux(stream) if p.size > 0)
        rate = stream.average_rate or stream.guessed_rate or 0
        return ClipInfo(frames=frames, fps=float(rate), width=stream.codec_context.width,
                        height=stream.codec_context.height)
