"""Read and write videos and images as uint8 RGB arrays (T×H×W×3 / H×W×3).

Reading: mp4, mkv, webm, avi, mov, gif, or a folder of image frames (sorted by name).
Writing: an H.264 mp4 for people and a lossless FFV1 mkv for re-scoring (bit-exact round trip).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import av
import imageio.v3 as iio
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class MediaError(ValueError):
    """A file that cannot be read as the expected kind of media (the message names the file)."""


def read_video(path: str | os.PathLike) -> np.ndarray:
    """uint8 T×H×W×3 frames of a video file or of a folder of image frames."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MediaError(f"{path}: folder holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
        frames = [read_image(f) for f in files]
        if len({f.shape for f in frames}) != 1:
            raise MediaError(f"{path}: frames differ in size")
        return np.stack(frames)
    try:
        if path.suffix.lower() == ".gif":
            video = iio.imread(path, index=None, mode="RGB")
        else:
            with av.open(str(path)) as container:
                video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            video = np.stack(video) if video else np.zeros((0,))
    except Exception as e:  # decoders raise many types for corrupt files
        raise MediaError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise MediaError(f"{path}: decoded to shape {video.shape}, expected T×H×W×3")
    return video.astype(np.uint8, copy=False)


def read_image(path: str | os.PathLike, *, allow_gray: bool = False) -> np.ndarray:
    """uint8 H×W×3 RGB image (or H×W when `allow_gray`). Grayscale or RGBA input is an error for RGB use."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise MediaError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise MediaError(f"{path}: expected 8-bit pixels, got {img.dtype}")
    if allow_gray:
        if img.ndim == 2:
            return img
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            return img[..., :3].max(axis=-1)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 1):
        raise MediaError(f"{path}: grayscale image, expected RGB (convert it to RGB)")
    if img.ndim == 3 and img.shape[-1] == 4:
        raise MediaError(f"{path}: RGBA image, expected RGB (drop or flatten the alpha channel)")
    if img.ndim != 3 or img.shape[-1] != 3:
        raise MediaError(f"{path}: image of shape {img.shape}, expected H×W×3")
    return img


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    _atomic(Path(path), lambda tmp: iio.imwrite(tmp, np.asarray(image)))


def write_video_viewable(path: str | os.PathLike, frames: np.ndarray, fps: float = 7.0) -> None:
    """H.264 yuv420p mp4 that browsers play; odd sizes are padded by one edge pixel."""
    frames = _check_frames(frames)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    _atomic(Path(path), lambda tmp: _encode(tmp, "mp4", frames, fps, "libx264", "yuv420p", {"crf": "18", "movflags": "+faststart"}))


def write_video_lossless(path: str | os.PathLike, frames: np.ndarray, fps: float = 7.0) -> None:
    """FFV1 in Matroska: exact round trip through `read_video`."""
    _atomic(Path(path), lambda tmp: _encode(tmp, "matroska", _check_frames(frames), fps, "ffv1", "bgr0", {}))


def _encode(path: str, fmt: str, frames: np.ndarray, fps: float, codec: str, pix_fmt: str, options: dict) -> None:
    from fractions import Fraction

    with av.open(path, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 T×H×W×3 frames, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
