"""Read and write videos and images as uint8 RGB arrays (T×H×W×3 / H×W×3).

Reading: mp4, mkv, webm, avi, mov, gif, or a folder of image frames (sorted by name); all frames, or a few evenly
spaced ones streamed out of a long clip in bounded memory. Only regular files are read (a FIFO or a device would
block or never end).
Writing: an H.264 mp4 for people and a lossless FFV1 mkv for re-scoring (bit-exact round trip).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import av
import imageio.v3 as iio
import numpy as np
from PIL import Image

from harness.files import write_with

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# Frames a complete file may decode short of what its container declares before it counts as truncated: real
# mp4s with edit lists or a dropped trailing B-frame decode a frame or two fewer than their stream's count.
TRUNCATION_SLACK_FRAMES = 2
#: How a loader keeps `num_frames` of a longer clip: evenly spaced over it (first and last included), or the first ones.
PICKS = ("even", "first")


class MediaError(ValueError):
    """A file that cannot be read as the expected kind of media; `path` and `problem` are kept apart for callers."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


#: What os.stat says a path is when it is not a regular file.
_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular_file(path: Path) -> None:
    """Raise unless `path` is (or links to) a non-empty regular file: opening a FIFO blocks, a device never ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaError(path, "no such file") from None
    except OSError as e:
        raise MediaError(path, f"cannot stat ({type(e).__name__}: {e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "another kind of file")
        raise MediaError(path, f"not a regular file ({kind})")
    if st.st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")


def read_video(path: str | os.PathLike, num_frames: int | None = None, pick: str = "even") -> np.ndarray:
    """uint8 T×H×W×3 frames of a video file or of a folder of image frames (truncation is an error).

    Every frame, or with `num_frames` only the frames at `evenly_spaced(T, num_frames)` of its T frames
    (`pick="even"`), or its first `num_frames` frames at the native rate (`pick="first"`); all T when
    T ≤ num_frames, for the caller to judge. They are picked while streaming, so memory does not grow with the
    clip's length, and they equal those of the whole clip selected the same way, bit for bit.
    """
    if pick not in PICKS:
        raise ValueError(f"frame pick must be one of {', '.join(PICKS)}, got {pick!r}")
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "no such file or folder")
    first = pick == "first" and num_frames is not None
    if path.is_dir():
        return _read_frame_folder(path, num_frames, first)
    if path.suffix.lower() == ".gif":
        video = _read_gif(path, num_frames, first)
    elif first:
        video, _ = decode_video(path, first=num_frames)
    else:
        video, _ = decode_video(path, num_frames=num_frames)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise MediaError(path, f"decoded to shape {video.shape}, expected T×H×W×3")
    return video.astype(np.uint8, copy=False)


def selected(count: int, num_frames: int | None, first: bool = False) -> np.ndarray:
    """Indices of the frames kept of `count`: all (num_frames None), the first `num_frames`, or evenly spaced."""
    if num_frames is None:
        return np.arange(count)
    return np.arange(min(count, num_frames)) if first else evenly_spaced(count, num_frames)


def evenly_spaced(count: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread evenly over `count`, first and last included (rounded); all when fewer."""
    if count <= num_frames:
        return np.arange(count)
    return np.round(np.linspace(0, count - 1, num_frames)).astype(int)


def _read_frame_folder(path: Path, num_frames: int | None, first: bool = False) -> np.ndarray:
    """The image frames of a folder, sorted by name; only the selected ones are decoded, every one is checked."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MediaError(path, f"folder holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
    sizes = {_image_size(f) for f in files}  # headers only: a FIFO, a folder or a damaged frame fails here
    if len(sizes) != 1:
        raise MediaError(path, "frames differ in size")
    files = [files[i] for i in selected(len(files), num_frames, first)]
    return np.stack([read_image(f) for f in files])


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from an image file's header (its pixels are not decoded)."""
    _check_regular_file(path)
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:  # Pillow raises many types for a damaged file
        raise MediaError(path, f"cannot decode image ({type(e).__name__}: {e})") from e


def _read_gif(path: Path, num_frames: int | None, first: bool = False) -> np.ndarray:
    """The frames of a GIF as RGB, stepped through one at a time (imageio's Pillow plugin, as `iio.imread` reads it)."""
    _check_regular_file(path)
    try:  # a truncated gif fails inside the decoder
        with iio.imopen(path, "r", plugin="pillow") as gif:
            count = gif.properties(index=...).n_images
            keep = selected(count, num_frames, first)
            return np.stack([gif.read(index=int(i), mode="RGB") for i in keep])
    except Exception as e:
        raise MediaError(path, f"cannot decode video ({type(e).__name__}: {e})") from e


def decode_video(path: str | os.PathLike, start: float | None = None, end: float | None = None,
                 num_frames: int | None = None, indices: Sequence[int] | None = None,
                 first: int | None = None) -> tuple[np.ndarray, float]:
    """Frames of the first video stream whose times (s, from the stream's start) fall in [start, end], and its rate.

    All of them; or with `indices`, those positions within the span (one outside it is an error); or with
    `num_frames`, `evenly_spaced(N, num_frames)` of the span's N frames; or with `first`, the span's first `first`
    frames (all N when fewer). A selection is converted to RGB while
    streaming, never holding the rest: the span's length is first counted from the container (its exact frame
    count, else its packets, demuxed without decoding), and when decoding finds another length the span is
    decoded once more with the right indices.

    A decoder error is an error, never a silent end. When decoding reaches the end of the file, the frames up to
    there are compared with the length the container declares (`declared_frames`): fewer means the file was
    cut short, reported as "truncated: decoded X of Y frames".
    """
    if sum(v is not None for v in (num_frames, indices, first)) > 1:
        raise ValueError("decode_video takes one of num_frames, indices or first")
    path = Path(path)
    _check_regular_file(path)
    if indices is not None:
        order = [int(i) for i in indices]
        frames, count, rate = _decode_span(path, start, end, set(order))
        outside = [i for i in order if not 0 <= i < count]
        if outside:
            raise MediaError(path, f"frame indices {outside} lie outside the span's {count} frames")
    elif first is not None:
        frames, count, rate = _decode_span(path, start, end, set(range(first)))
        order = range(min(first, count))
    elif num_frames is None:
        frames, count, rate = _decode_span(path, start, end, None)
        order = range(count)
    else:
        guess = _count_span(path, start, end)
        frames, count, rate = _decode_span(path, start, end, set(evenly_spaced(guess, num_frames).tolist()))
        order = evenly_spaced(count, num_frames).tolist()
        if count != guess:
            frames, count, rate = _decode_span(path, start, end, set(order))
    return np.stack([frames[i] for i in order]), rate


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except Exception as e:
        raise MediaError(path, f"cannot open as a video, the file is damaged, truncated or not a video ({type(e).__name__}: {e})") from e


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float | None) -> None:
    if start:
        container.seek(int(start / stream.time_base) + (stream.start_time or 0), stream=stream, any_frame=False, backward=True)


def _count_span(path: Path, start: float | None, end: float | None) -> int:
    """Frames in [start, end] as the container tells without decoding: its exact frame count for the whole file,
    else its packets whose times fall in the span. A guess that `decode_video` checks; a damaged file is left to it."""
    with _open(path) as container:
        if not container.streams.video:
            return 0
        stream = container.streams.video[0]
        declared = declared_frames(container, stream)
        if start is None and end is None and declared and declared[1]:
            return declared[0]
        t0, count = stream.start_time or 0, 0
        try:
            _seek(container, stream, start)
            for packet in container.demux(stream):
                if not packet.size:  # the demuxer's closing empty packet
                    continue
                if end is not None and packet.dts is not None and float((packet.dts - t0) * stream.time_base) > end + 1e-6:
                    break  # decode order: every later packet shows after this one, so after the span
                t = float((packet.pts - t0) * stream.time_base) if packet.pts is not None else None
                if t is None or ((start is None or t >= start - 1e-6) and (end is None or t <= end + 1e-6)):
                    count += 1
        except Exception:  # demuxers raise many types for corrupt data; decoding reports it
            pass
    return count


def _decode_span(path: Path, start: float | None, end: float | None,
                 keep: set[int] | None) -> tuple[dict[int, np.ndarray], int, float]:
    """One streaming decode of [start, end]: the RGB frames at the span positions in `keep` (all when None), the
    span's frame count and the rate; truncation and decoder errors raised as `decode_video` describes."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(path, "holds no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        declared = declared_frames(container, stream)
        t0 = stream.start_time or 0
        frames, count, n_seen, first_t, error, to_eof = {}, 0, 0, None, None, True
        try:
            _seek(container, stream, start)
            for frame in container.decode(stream):
                t = float((frame.pts - t0) * stream.time_base) if frame.pts is not None else None
                if first_t is None:
                    first_t = t
                n_seen += 1
                if start is not None and t is not None and t < start - 1e-6:
                    continue
                if end is not None and t is not None and t > end + 1e-6:
                    to_eof = False
                    break
                if keep is None or count in keep:
                    frames[count] = frame.to_ndarray(format="rgb24")
                count += 1
        except Exception as e:  # decoders raise many types for corrupt data
            error = e
    if to_eof and declared:
        expected, exact = declared
        # frames from the file's start to where decoding stopped (after a seek: those before it estimated from time)
        reached = n_seen + (round(first_t * float(rate)) if start and first_t and rate else 0)
        if reached < expected - (TRUNCATION_SLACK_FRAMES if exact else TRUNCATION_SLACK_FRAMES + 1):
            why = f" (decoding stopped on {type(error).__name__}: {error})" if error else ""
            raise MediaError(path, f"truncated: decoded {reached} of {expected} frames{why}")
    if error is not None:
        raise MediaError(path, f"cannot decode video ({type(error).__name__}: {error})") from error
    if not count:
        span = "" if start is None and end is None else f" in the span [{start}, {end}] s"
        raise MediaError(path, f"no frames{span}")
    return frames, count, float(rate or 0.0)


def declared_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[int, bool] | None:
    """How many frames the file says its video stream has, and whether that count is exact; None when it does not say.

    Exact: the stream's frame count (mp4, mov, avi, gif). Else estimated as duration × average frame rate, the
    duration taken from the stream, from the per-track DURATION tag (Matroska/WebM), or from the container when
    the video is its only stream (another stream, e.g. longer audio, would inflate it). An estimate may be one
    frame high (muxers round the last frame's duration), so callers allow one frame more of slack.
    """
    if stream.frames:
        return int(stream.frames), True
    rate = stream.average_rate
    if not rate:
        return None
    seconds = None
    if stream.duration:
        seconds = float(stream.duration * stream.time_base)
    elif stream.metadata.get("DURATION"):
        try:  # "HH:MM:SS.fraction"
            h, m, s = stream.metadata["DURATION"].split(":")
            seconds = int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            seconds = None
    elif container.duration and len(container.streams) == 1:
        seconds = container.duration / av.time_base
    count = round(seconds * float(rate)) if seconds else 0
    return (count, False) if count > 0 else None


def read_image(path: str | os.PathLike, *, allow_gray: bool = False) -> np.ndarray:
    """uint8 H×W×3 RGB image (or H×W when `allow_gray`). Grayscale or RGBA input is an error for RGB use."""
    path = Path(path)
    _check_regular_file(path)
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise MediaError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise MediaError(path, f"expected 8-bit pixels, got {img.dtype}")
    if allow_gray:
        if img.ndim == 2:
            return img
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            return img[..., :3].max(axis=-1)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 1):
        raise MediaError(path, "grayscale image, expected RGB (convert it to RGB)")
    if img.ndim == 3 and img.shape[-1] == 4:
        raise MediaError(path, "RGBA image, expected RGB (drop or flatten the alpha channel)")
    if img.ndim != 3 or img.shape[-1] != 3:
        raise MediaError(path, f"image of shape {img.shape}, expected H×W×3")
    return img


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    write_with(path, lambda tmp: iio.imwrite(tmp, np.asarray(image)))


def write_video_viewable(path: str | os.PathLike, frames: np.ndarray, fps: float = 7.0) -> None:
    """H.264 yuv420p mp4 that browsers play; odd sizes are padded by one edge pixel."""
    frames = _check_frames(frames)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    write_with(path, lambda tmp: _encode(tmp, "mp4", frames, fps, "libx264", "yuv420p", {"crf": "18"}, {"movflags": "+faststart"}))


def write_video_lossless(path: str | os.PathLike, frames: np.ndarray, fps: float = 7.0) -> None:
    """FFV1 in Matroska: exact round trip through `read_video`."""
    write_with(path, lambda tmp: _encode(tmp, "matroska", _check_frames(frames), fps, "ffv1", "bgr0", {}))


def _encode(path: str, fmt: str, frames: np.ndarray, fps: float, codec: str, pix_fmt: str, options: dict,
            container_options: dict | None = None) -> None:
    from fractions import Fraction

    with av.open(path, mode="w", format=fmt, options=container_options or {}) as container:
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
