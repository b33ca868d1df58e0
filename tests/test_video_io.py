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
