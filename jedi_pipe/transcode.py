"""Source video -> encoded clip bytes, with ffmpeg driven through ffmpeg-python.

Sources (XviD AVI, H.264 MP4, VP9 WebM, anything ffmpeg reads) are decoded by ffmpeg, never
by DALI; the output codec is one that the loaders can decode (VP9 on both DALI paths).
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

from .errors import JediPipeError

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
        for name, kind in (("fps", (int, float)), ("short_side", int), ("max_seconds", (int, float))):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")
        # a recipe's `fps: 15` and the CLI's 15.0 are the same setting (and the same fingerprint)
        object.__setattr__(self, "fps", float(self.fps))
        object.__setattr__(self, "max_seconds", float(self.max_seconds))
        for name, ok, need in (("fps", 0 < self.fps < math.inf, "a finite number > 0"),
                               ("short_side", self.short_side >= 8, "an integer >= 8"),
                               ("max_seconds", 0 < self.max_seconds < math.inf, "a finite number > 0")):
            if not ok:   # nan fails both comparisons
                raise ValueError(f"--{name.replace('_', '-')} must be {need}, got {getattr(self, name)}")
        if self.codec == "h264" and self.short_side % 2:
            # libx264 refuses odd sizes in 4:2:0; VP9 and MJPEG take them
            raise ValueError(f"--short-side {self.short_side} is odd; h264 (yuv420p) needs an even size")

    @property
    def ext(self) -> str:
        return CODECS[self.codec][0]

    def as_dict(self) -> dict:
        return asdict(self)


# The version of the ffmpeg filters below, recorded with the encoding settings: a shard folder's
# clips all come from one (a run of other filters is not resumed into it). What each version
# changed; a source the change does not touch gives the same clip under both.
FILTER_CHAINS = {
    2: "interlaced frames deinterlaced and pixels made square (2026-12-01)",
    3: "the main video stream read, not the first, in a file of several (2026-12-01)",
}
FILTER_CHAIN = max(FILTER_CHAINS)

# The widest (or tallest) picture a clip keeps, long side : short side. Real footage is at most
# about 2.4:1 (cinema scope); anything beyond is cropped around its centre.
MAX_ASPECT = 4


# Wall-clock limit of one transcode. Sources are cut to max_seconds, so a healthy transcode takes
# seconds even for 4K on one core; ten minutes only ever catches a hang.
DEFAULT_TIMEOUT_S = 600.0


class TranscodeError(JediPipeError):
    """A source video that cannot be turned into a clip; the message is the reason."""


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
    """A system ffmpeg when one is on PATH, else the static binary that imageio-ffmpeg ships."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_args(src: str, dst: str, settings: EncodeSettings, stream_index: int | None = None) -> list[str]:
    """The ffmpeg command line for one transcode (also used by the throughput baseline) of the
    source's stream number `stream_index` (`main_video_stream`), or of its first video stream when None."""
    import ffmpeg  # ffmpeg-python
    opts = dict(CODECS[settings.codec][1])
    # fps before scale: frames are dropped/duplicated first, so scaling works on fewer frames.
    # A source beyond MAX_ASPECT:1 is centre-cropped to it first (a no-op for any other), else a
    # 4000x10 banner would become a 51200 x 128 clip. Short side to `short_side`; the long side
    # keeps the aspect, rounded to even for yuv420p.
    # Interlaced frames are deinterlaced first (yadif passes progressive ones through), and
    # non-square pixels (anamorphic DV, some phones) made square (width x SAR; a no-op at SAR 1,
    # which the loaders assume: they read stored pixels), so sizes and crops are of the picture shown.
    # yadif needs 3 rows and columns: a smaller source (a 1x1 test pattern) is first blown up to that
    tiny = "lt(min(iw,ih),3)"
    source = ffmpeg.input(src, t=settings.max_seconds)
    stream = (source.video if stream_index is None else source[str(stream_index)])
    stream = (stream
              .filter("scale", w=f"if({tiny},ceil(iw*3/min(iw,ih)),iw)", h=f"if({tiny},ceil(ih*3/min(iw,ih)),ih)")
              .filter("yadif", deint="interlaced")
              .filter("fps", fps=settings.fps)
              .filter("scale", w="if(eq(sar,1),iw,trunc(iw*sar/2)*2)", h="ih")
              .filter("setsar", "1")
              .filter("crop", w=f"min(iw,{MAX_ASPECT}*ih)", h=f"min(ih,{MAX_ASPECT}*iw)")
              .filter("scale", w=f"if(lte(iw,ih),{settings.short_side},-2)",
                      h=f"if(lte(iw,ih),-2,{settings.short_side})", flags="bilinear")
              .filter("setsar", "1"))   # say so in the clip: the even rounding above would tag it 80:81 or so
    # bitexact: no random segment UID or encoder-version string in the container, so equal inputs give
    # equal bytes (libx264 still writes its settings string into the h264 stream itself)
    # map_metadata -1: no tag of the source (a title, a file name) reaches the clip; an unlabeled
    # clip must not name its video or class (shards/README.md)
    out = ffmpeg.output(stream, dst, an=None, threads=1, fflags="+bitexact", map_metadata="-1",
                        map_chapters="-1", **{"flags:v": "+bitexact"}, **opts)
    return ffmpeg.compile(out.global_args("-nostdin", "-loglevel", "error"),
                          cmd=ffmpeg_exe(), overwrite_output=True)


def transcode(src: str, settings: EncodeSettings, tmp_dir: str | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """Decode `src` with ffmpeg and return the encoded clip; raises TranscodeError with a reason.

    ffmpeg runs under a wall-clock limit: a hung decode (a broken file, a stalled network mount)
    is killed after `timeout_s` and reported, instead of stalling the whole run.
    """
    if not os.path.exists(src):
        raise TranscodeError("missing file")
    if not os.path.isfile(src):
        raise TranscodeError("not a regular file")
    if os.path.getsize(src) == 0:
        raise TranscodeError("zero-byte file")
    try:
        if _looks_like_text(src):   # ffmpeg's tty demuxer would draw a text file as a video of its letters
            raise TranscodeError("not a video: a text file")
        stream_index = main_video_stream(src, timeout_s)
    except OSError as e:   # this video's fault (no read permission), not the run's: recorded, the run goes on
        raise TranscodeError(f"cannot read the file: {e.strerror or e}") from None
    fd, dst = tempfile.mkstemp(prefix="jedi-pipe-", suffix="." + settings.ext, dir=tmp_dir)   # named: a kill -9 leaves it findable
    os.close(fd)
    try:
        try:
            # errors="replace": ffmpeg echoes file names, which need not be valid UTF-8
            proc = subprocess.run(ffmpeg_args(src, dst, settings, stream_index), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, errors="replace", timeout=timeout_s)
        except subprocess.TimeoutExpired:   # run() has killed ffmpeg already
            raise TranscodeError(f"ffmpeg did not finish within {timeout_s:g} s and was killed "
                                 f"(a hung or pathological input)") from None
        if proc.returncode != 0:
            raise TranscodeError(_ffmpeg_reason(proc.stderr))
        with open(dst, "rb") as f:
            data = f.read()
    finally:
        os.unlink(dst)
    if len(data) == 0:
        raise TranscodeError(_no_frames(settings))
    return data


def encode_clip(src: str, settings: EncodeSettings, tmp_dir: str | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S, min_frames: int = 1) -> tuple[bytes, "ClipInfo"]:
    """`transcode` + `probe_clip`, refusing clips with fewer than `min_frames` frames.

    A truncated source gives what decodes before the damage; it is kept when that is at least
    `min_frames` frames at the output rate.
    """
    import av
    data = transcode(src, settings, tmp_dir=tmp_dir, timeout_s=timeout_s)
    try:
        info = probe_clip(data)
    except (av.error.FFmpegError, EOFError, IndexError):
        # ffmpeg wrote a container without a single frame (WebM then has no cluster to read)
        raise TranscodeError(_no_frames(settings)) from None
    if info.frames < 1:
        raise TranscodeError(_no_frames(settings))
    if info.frames < min_frames:
        raise TranscodeError(f"only {info.frames} frame(s) at {settings.fps:g} fps, fewer than "
                             f"min_frames {min_frames} (truncated or too short)")
    return data, info


def main_video_stream(src: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int | None:
    """The number of the video stream ffmpeg itself would pick (av_find_best_stream: not a cover
    picture, the default or largest), where a file has several: the first can be a thumbnail or
    cover track. None when there is at most one, or the file does not open in `timeout_s` (ffmpeg
    then says why, under its own limit)."""
    import av
    try:
        with av.open(src, timeout=timeout_s) as container:
            if len(container.streams.video) < 2:
                return None
            best = container.streams.best("video")
            return None if best is None else best.index   # inside: a closed container's streams read garbage
    except (av.error.FFmpegError, EOFError, IndexError, ValueError):
        return None


def _looks_like_text(path: str) -> bool:
    """Whether the file starts as text: every video container starts with binary bytes (a NUL or
    other control byte within its first kilobyte), a split file or a README does not."""
    with open(path, "rb") as f:
        head = f.read(1024)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:   # a multi-byte character cut at the end of the kilobyte is still text
        if e.start < len(head) - 3:
            return False
        text = head[:e.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)


def _no_frames(settings: EncodeSettings) -> str:
    return (f"no video frames at {settings.fps:g} fps (shorter than one output frame, "
            f"or no frame decodes)")


def _ffmpeg_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = "\n".join(lines)
    if "moov atom not found" in text:
        return "truncated or unfinished MP4, or not a video (moov atom not found)"
    if "does not contain any stream" in text or "matches no streams" in text:
        return "no video stream (audio only or empty container)"
    if "Invalid data found when processing input" in text:
        return "not a video, or truncated before its first frame (ffmpeg: invalid data found when processing input)"
    last = lines[-1] if lines else "no message"
    return "ffmpeg failed: " + (last if len(last) <= 200 else last[:200] + "...")


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
