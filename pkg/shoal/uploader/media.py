"""FFmpeg and ffprobe: check that an upload really is a whole video, and remux it into fMP4.

The check looks at the content, never the file name: ffprobe must recognise one of the
supported containers, find a video stream, and read every packet without an error (a cut-off
file shows up as "partial file", "File ended prematurely", or far fewer packets than the
header declares). The remux copies the streams (no re-encoding) into fragmented MP4 with
small fragments; only a stream the MP4 container cannot carry is re-encoded, audio first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shoal.runtime import lifetime

# ffprobe format names (comma-separated lists) -> the container we accept it as.
SUPPORTED_FORMATS = {
    "mov": "mov",
    "mp4": "mp4",
    "avi": "avi",
    "matroska": "mkv",
    "webm": "webm",
    "flv": "flv",
}
# Fragments end at a keyframe, after this long, or at this size, whichever comes first, so one
# fragment stays well under a 2 MiB chunk at any common bitrate (8 Mbit/s: ~0.5 MB per fragment).
FRAGMENT_MICROSECONDS = 500_000
FRAGMENT_BYTES = 1 << 20
FMP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


class InvalidVideo(ValueError):
    """The upload is not a complete video in a supported container (HTTP 400)."""


class MediaToolError(RuntimeError):
    """ffmpeg/ffprobe is missing or failed on input that passed the probe."""


@dataclass
class Probe:
    container: str  # mp4, mov, avi, mkv, webm, flv
    format_name: str
    duration_sec: float
    size_bytes: int
    video_codec: str
    width: int
    height: int
    audio_codec: str | None = None
    bit_rate: int = 0
    streams: list[dict] = field(default_factory=list)


def tool(name: str) -> str:
    """Path of ffmpeg/ffprobe (SHOAL_FFMPEG_DIR first, then PATH)."""
    folder = os.environ.get("SHOAL_FFMPEG_DIR")
    found = shutil.which(name, path=folder) if folder else None
    found = found or shutil.which(name)
    if not found:
        raise MediaToolError(f"{name} not found: install FFmpeg (Debian package 'ffmpeg')")
    return found


async def _run(*args: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run a tool that dies with this process (PDEATHSIG, own process group); on a timeout, a
    cancel (the upload's request or task ended) or any other error its whole group is killed."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **lifetime.child_options(),
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except BaseException:
        lifetime.kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    return proc.returncode or 0, out, err


def _first_line(err: bytes, path: Path) -> str:
    text = err.decode(errors="replace").replace(f"{path}: ", "").replace(str(path), "input").strip()
    lines = [ln.split("] ", 1)[-1].strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "unreadable"


async def probe(path: str | os.PathLike[str], timeout: float = 300.0) -> Probe:
    """Probe `path` and read all its packets; InvalidVideo saying why when it is not acceptable."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise InvalidVideo("the video file is empty")
    rc, out, err = await _run(
        tool("ffprobe"),
        "-v",
        "error",
        "-count_packets",
        "-show_entries",
        "format=format_name,duration,bit_rate:format_tags=major_brand:stream=index,codec_type,codec_name,width,height,"
        "nb_frames,nb_read_packets:stream_disposition=attached_pic",
        "-of",
        "json",
        str(path),
        timeout=timeout,
    )
    if rc != 0:
        raise InvalidVideo(f"not a readable video: {_first_line(err, path)}")
    try:
        info = orjson.loads(out)
        fmt = info["format"]
    except (orjson.JSONDecodeError, KeyError):
        raise InvalidVideo("not a readable video: ffprobe found no container") from None
    names = str(fmt.get("format_name", "")).split(",")
    container = next((SUPPORTED_FORMATS[n] for n in names if n in SUPPORTED_FORMATS), None)
    if container is None:
        raise InvalidVideo(
            f"unsupported format {fmt.get('format_name')!r}: upload MP4, AVI, MOV, MKV, WebM or FLV"
        )
    if container == "mov" and "mp4" in names:
        brand = str(fmt.get("tags", {}).get("major_brand", "")).strip()
        container = "mov" if brand == "qt" else "mp4"
    if "webm" in names and "matroska" in names:
        container = "mkv"  # ffprobe reports both for either; the codecs tell them apart below
    streams = info.get("streams", [])
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not videos:
        raise InvalidVideo("the file has no video stream")
    if err.strip():
        raise InvalidVideo(f"the video is damaged or truncated: {_first_line(err, path)}")
    for s in streams:
        declared = _int(s.get("nb_frames"))
        read = _int(s.get("nb_read_packets"))
        if declared > 0 and declared - read > max(2, declared // 50):
            raise InvalidVideo(
                f"the video is truncated: stream {s.get('index')} declares {declared} frames, "
                f"only {read} are present"
            )
    if sum(_int(s.get("nb_read_packets")) for s in videos) == 0:
        raise InvalidVideo("the video stream has no frames")
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    video = videos[0]
    if container == "mkv" and video.get("codec_name") in ("vp8", "vp9", "av1"):
        container = "webm"
    return Probe(
        container=container,
        format_name=str(fmt.get("format_name")),
        duration_sec=_float(fmt.get("duration")),
        size_bytes=size,
        video_codec=str(video.get("codec_name")),
        width=_int(video.get("width")),
        height=_int(video.get("height")),
        audio_codec=str(audios[0].get("codec_name")) if audios else None,
        bit_rate=_int(fmt.get("bit_rate")),
        streams=streams,
    )


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _float(value: object) -> float:
    try:
        return max(0.0, float(str(value)))
    except ValueError:
        return 0.0


def remux_args(src: Path, dst: Path, video: str = "copy", audio: str = "copy") -> list[str]:
    """The ffmpeg command line: first video stream and first audio stream into fragmented MP4."""
    args = [
        tool("ffmpeg"),
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-i",
        str(src),
        "-map",
        "0:V:0",
        "-map",
        "0:a:0?",
        "-dn",
        "-sn",
    ]
    if video == "copy":
        args += ["-c:v", "copy"]
    else:
        args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "copy"] if audio == "copy" else ["-c:a", "aac", "-b:a", "160k"]
    args += [
        "-movflags",
        FMP4_FLAGS,
        "-frag_duration",
        str(FRAGMENT_MICROSECONDS),
        "-frag_size",
        str(FRAGMENT_BYTES),
        "-f",
        "mp4",
        str(dst),
    ]
    return args


async def remux(src: str | os.PathLike[str], dst: str | os.PathLike[str], timeout: float = 3600.0) -> str:
    """Write `src` as fragmented MP4 to `dst`; returns how: 'copy', 'audio-aac' or 'transcode'.

    Copy first; when the MP4 muxer refuses a codec (e.g. VP8 video, PCM audio), re-encode the
    audio, and only if that is not enough the video too.
    """
    src, dst = Path(src), Path(dst)
    errors = []
    for how, video, audio in (
        ("copy", "copy", "copy"),
        ("audio-aac", "copy", "aac"),
        ("transcode", "x264", "aac"),
    ):
        rc, _, err = await _run(*remux_args(src, dst, video, audio), timeout=timeout)
        if rc == 0:
            return how
        errors.append(f"{how}: {_first_line(err, src)}")
    dst.unlink(missing_ok=True)
    raise MediaToolError("ffmpeg could not remux the video: " + "; ".join(errors))


async def decode_errors(path: str | os.PathLike[str], timeout: float = 600.0) -> str:
    """What `ffmpeg -v error -i path -f null -` prints (empty: decodes cleanly); for checks and tests."""
    rc, _, err = await _run(
        tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-", timeout=timeout
    )
    text = err.decode(errors="replace").strip()
    return text or ("" if rc == 0 else f"ffmpeg exited with {rc}")
