"""Video I/O: lossless round trip, viewable mp4, gif and frame folders, and clear errors."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from data.video_io import MediaError, read_image, read_video, write_video_lossless, write_video_viewable


@pytest.fixture
def clip():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)


def test_lossless_round_trip_is_exact(tmp_path, clip):
    write_video_lossless(tmp_path / "v.mkv", clip)
    np.testing.assert_array_equal(read_video(tmp_path / "v.mkv"), clip)


def test_viewable_mp4_is_h264_and_close(tmp_path):
    smooth = np.broadcast_to(np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None], (4, 32, 48, 3)).copy()
    write_video_viewable(tmp_path / "v.mp4", smooth)
    import av

    with av.open(str(tmp_path / "v.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == smooth.shape and np.abs(back.astype(int) - smooth).mean() < 3


def test_gif_and_frame_folder(tmp_path, clip):
    iio.imwrite(tmp_path / "v.gif", clip, extension=".gif")
    assert read_video(tmp_path / "v.gif").shape == clip.shape
    (tmp_path / "frames").mkdir()
    for i, f in enumerate(clip):
        iio.imwrite(tmp_path / "frames" / f"{i:03d}.png", f)
    np.testing.assert_array_equal(read_video(tmp_path / "frames"), clip)


def test_bad_media_errors_name_the_file(tmp_path, clip):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaError, match="broken.mp4"):
        read_video(tmp_path / "broken.mp4")
    iio.imwrite(tmp_path / "gray.png", clip[0, ..., 0])
    with pytest.raises(MediaError, match="gray.png: grayscale"):
        read_image(tmp_path / "gray.png")
    iio.imwrite(tmp_path / "rgba.png", np.dstack([clip[0], clip[0, ..., :1]]))
    with pytest.raises(MediaError, match="rgba.png: RGBA"):
        read_image(tmp_path / "rgba.png")


# --- truncation: a file cut short is an error even when what is left still decodes --------------------------


def _noise(frames: int, size=(48, 64)) -> np.ndarray:
    return np.random.default_rng(frames).integers(0, 256, (frames, *size, 3), dtype=np.uint8)


WRITERS = {"mkv": write_video_lossless, "mp4": write_video_viewable}


@pytest.mark.parametrize("suffix", WRITERS)
@pytest.mark.parametrize("keep", [0.6, 0.9, 0.15])
def test_truncated_video_is_an_error_naming_the_file(tmp_path, suffix, keep):
    path = tmp_path / f"clip.{suffix}"
    WRITERS[suffix](path, _noise(72))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MediaError, match=r"clip\.%s: truncated: decoded \d+ of 72 frames" % suffix) as err:
        read_video(path)
    decoded = int(str(err.value).split("decoded ")[1].split(" of")[0])
    assert decoded < 72 * keep + 2  # no more frames than the bytes kept could hold


def test_viewable_mp4_has_its_index_first_so_a_cut_file_still_opens(tmp_path):
    write_video_viewable(tmp_path / "v.mp4", _noise(8))
    data = (tmp_path / "v.mp4").read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart


@pytest.mark.parametrize("frames", [13, 15, 14])
def test_complete_videos_with_b_frames_and_odd_counts_are_not_flagged(tmp_path, frames):
    import av

    y, x = np.mgrid[0:48, 0:64]
    clip = np.stack([np.stack([(x + 2 * t) * 3, y * 5, (x + y + t) * 2], -1) % 256 for t in range(frames)]).astype(np.uint8)
    write_video_viewable(tmp_path / "v.mp4", clip)
    with av.open(str(tmp_path / "v.mp4")) as c:
        pts = [p.pts for p in c.demux(video=0) if p.pts is not None]
    assert pts != sorted(pts)  # B-frames: libx264 stores frames out of display order
    assert read_video(tmp_path / "v.mp4").shape == clip.shape
    write_video_lossless(tmp_path / "v.mkv", clip)  # Matroska declares no frame count, only a duration
    np.testing.assert_array_equal(read_video(tmp_path / "v.mkv"), clip)
    iio.imwrite(tmp_path / "v.gif", clip, extension=".gif")
    assert read_video(tmp_path / "v.gif").shape == clip.shape


def test_a_stream_that_declares_no_length_is_read_without_guessing(tmp_path):
    """A raw H.264 stream has no container length: the frames are returned and nothing is called truncated."""
    import av

    from data.video_io import declared_frames

    clip = _noise(10)
    with av.open(str(tmp_path / "v.h264"), mode="w", format="h264") as c:
        s = c.add_stream("libx264", rate=7)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in clip:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    with av.open(str(tmp_path / "v.h264")) as c:
        assert declared_frames(c, c.streams.video[0]) is None
    assert read_video(tmp_path / "v.h264").shape == clip.shape
