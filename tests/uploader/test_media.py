"""The content check (ffprobe) and the remux, on real files in every supported container."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.testing.uploader import make_video
from shoal.uploader import media

# (file name, container expected, how the remux goes)
FORMATS = [
    ("a.mp4", "mp4", "copy", {}),
    ("a.mov", "mov", "copy", {}),
    ("a.mkv", "mkv", "copy", {}),
    ("a.flv", "flv", "copy", {}),
    ("a.avi", "avi", "copy", {"codec": "mpeg4", "extra": ("-c:a", "mp3")}),
    ("a.webm", "webm", "transcode", {"codec": "libvpx"}),  # VP8 has no MP4 mapping
]


@pytest.fixture(scope="module")
def formats(video_dir: Path) -> dict[str, Path]:
    return {
        name: make_video(video_dir / name, size="320x240", seconds=2, bitrate="400k", **kw)
        for name, _, _, kw in FORMATS
    }


@pytest.mark.parametrize(("name", "container", "how"), [f[:3] for f in FORMATS])
async def test_supported_containers(
    formats: dict[str, Path], name: str, container: str, how: str, tmp_path: Path
) -> None:
    # the name says nothing: the content is what is probed
    anonymous = tmp_path / "upload.bin"
    anonymous.write_bytes(formats[name].read_bytes())
    probe = await media.probe(anonymous)
    assert probe.container == container
    assert probe.duration_sec == pytest.approx(2.0, abs=0.15)
    assert (probe.width, probe.height) == (320, 240)
    out = tmp_path / "out.mp4"
    assert await media.remux(anonymous, out) == how
    assert await media.decode_errors(out) == ""


async def test_not_a_video(tmp_path: Path) -> None:
    p = tmp_path / "notes.mp4"
    p.write_text("this is a text file pretending to be a video\n" * 100)
    with pytest.raises(media.InvalidVideo, match="not a readable video"):
        await media.probe(p)


async def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(media.InvalidVideo, match="empty"):
        await media.probe(p)


async def test_audio_only_is_not_a_video(video_dir: Path, tmp_path: Path) -> None:
    src = make_video(video_dir / "v.mkv", size="320x240", seconds=1, bitrate="200k")
    audio = tmp_path / "audio.mka"
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-vn", "-c:a", "copy", str(audio)], check=True)
    with pytest.raises(media.InvalidVideo, match="no video stream"):
        await media.probe(audio)


async def test_unsupported_container(video_dir: Path, tmp_path: Path) -> None:
    ts = make_video(video_dir / "a.ts", size="320x240", seconds=1, bitrate="200k")
    with pytest.raises(media.InvalidVideo, match="unsupported format"):
        await media.probe(ts)


@pytest.mark.parametrize("name", ["a.mp4", "a.mkv", "a.avi", "a.flv"])
async def test_truncated_files(formats: dict[str, Path], name: str, tmp_path: Path) -> None:
    data = formats[name].read_bytes()
    if name == "a.mp4":  # index at the front, so the cut hits the media data
        src = tmp_path / "fast.mp4"
        import subprocess

        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(formats[name]),
                "-c",
                "copy",
                "-movflags",
                "faststart",
                str(src),
            ],
            check=True,
        )
        data = src.read_bytes()
    cut = tmp_path / ("cut-" + name)
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(media.InvalidVideo, match=r"truncated|damaged|not a readable"):
        await media.probe(cut)
