"""Images and videos in, PIL images out — with errors that say what to fix.

An image may be a path, an http(s) URL, a ``data:`` URI, raw bytes, or a PIL image. URLs are fetched
with a time limit and a size cap (a chat should not stall on a slow server or swallow a 2 GB file).
Videos are read with PyAV (an optional dependency) or, for animated GIFs, with Pillow, and sampled
into evenly spaced frames as InternVL's own video chat does (the middle frame of each segment).
"""

from __future__ import annotations

import base64
import io
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from .errors import EnvironmentProblem, ImageError

ImageSource = Union[str, Path, bytes, bytearray, Image.Image]


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 50 * 1024 * 1024
    timeout_s: float = 15.0
    max_pixels: int = 178_956_970  # Pillow's own decompression-bomb threshold × 2


DEFAULT_LIMITS = FetchLimits()


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def describe(src: ImageSource) -> str:
    """A short label for an image source (for logs and error messages)."""
    if isinstance(src, Image.Image):
        return f"<PIL image {src.width}x{src.height}>"
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    text = str(src)
    return text if len(text) < 120 else text[:60] + "…" + text[-40:]


def load_image(src: ImageSource, limits: FetchLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open any supported image source as an RGB PIL image (fully loaded, file closed)."""
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, (bytes, bytearray)):
        return _decode(bytes(src), "the given bytes", limits)
    if isinstance(src, Path) or isinstance(src, str):
        text = str(src).strip()
        if text.startswith("data:"):
            return _decode(_data_uri(text), "the data URI", limits)
        if is_url(text):
            return _decode(fetch(text, limits), text, limits)
        path = Path(text).expanduser()
        if not path.exists():
            raise ImageError(f"Image not found: {text}. Check the path (relative paths are from {Path.cwd()}), "
                             "or pass an http(s) URL or a PIL image.")
        if path.is_dir():
            raise ImageError(f"{text} is a directory, not an image file. Pass the path of one image.")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"Cannot read image {text}: {exc.strerror}. Check its permissions.") from exc
        return _decode(data, text, limits)
    raise ImageError(f"Unsupported image type {type(src).__name__}: pass a path, URL, bytes or PIL image.")


def fetch(url: str, limits: FetchLimits = DEFAULT_LIMITS) -> bytes:
    """Download a URL into memory, refusing anything over ``limits.max_bytes``."""
    request = urllib.request.Request(url, headers={"User-Agent": "internvl-workbench"})
    try:
        with urllib.request.urlopen(request, timeout=limits.timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared and int(declared) > limits.max_bytes:
                raise ImageError(_too_large(url, int(declared), limits))
            data = response.read(limits.max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"Could not fetch {url}: the server answered {exc.code} {exc.reason}. "
                         "Check the URL, or download the image and pass its path.") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"Could not fetch {url}: {reason}. Check the URL and your network, "
                         "or download the image and pass its path.") from exc
    if len(data) > limits.max_bytes:
        raise ImageError(_too_large(url, len(data), limits))
    return data


def _too_large(url: str, size: int, limits: FetchLimits) -> str:
    return (f"The image at {url} is too large ({size / 1e6:.1f} MB > {limits.max_bytes / 1e6:.0f} MB limit). "
            "Download it and pass a smaller copy, or raise FetchLimits.max_bytes.")


def _data_uri(text: str) -> bytes:
    try:
        header, payload = text.split(",", 1)
        return base64.b64decode(payload) if header.endswith(";base64") else payload.encode()
    except ValueError as exc:
        raise ImageError("Malformed data URI: expected data:image/...;base64,<payload>.") from exc


def _decode(data: bytes, label: str, limits: FetchLimits) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > limits.max_pixels:
                raise ImageError(f"{label} is {img.width}x{img.height} pixels, over the "
                                 f"{limits.max_pixels:,}-pixel limit. Downscale it first.")
            return img.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label} is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF…). "
                         "Check that the file is an image and is not truncated.") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label} is too many pixels to open safely. Downscale it first.") from exc
    except OSError as exc:  # truncated or corrupt files
        raise ImageError(f"{label} could not be decoded ({exc}). The file may be truncated or corrupt.") from exc


# ---------------------------------------------------------------------------------------------
# Video


def segment_indices(num_frames: int, num_segments: int) -> list[int]:
    """The middle frame of each of ``num_segments`` equal segments (InternVL's sampling rule)."""
    if num_frames <= 0:
        return []
    n = min(num_segments, num_frames)
    size = num_frames / n
    return [min(num_frames - 1, int(size * i + size / 2)) for i in range(n)]


def load_video(src: str | Path, num_segments: int = 8) -> list[Image.Image]:
    """Read a video file and return ``num_segments`` evenly spaced RGB frames."""
    path = Path(str(src)).expanduser()
    if is_url(str(src)):
        raise ImageError(f"Video URLs are not fetched ({src}); download the video and pass its path.")
    if not path.exists():
        raise ImageError(f"Video not found: {src}. Check the path.")
    if path.suffix.lower() == ".gif":
        with Image.open(path) as gif:
            total = getattr(gif, "n_frames", 1)
            frames = []
            for index in segment_indices(total, num_segments):
                gif.seek(index)
                frames.append(gif.convert("RGB"))
            return frames
    try:
        import av
    except ImportError as exc:
        raise EnvironmentProblem("Reading video needs PyAV: pip install 'internvl-workbench[video]' "
                                 "(or pip install av). Animated GIFs work without it.") from exc
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames > 0:  # the count is in the header: decode only up to the last wanted frame
                wanted = segment_indices(stream.frames, num_segments)
                picked = {}
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted:
                        picked[i] = frame.to_image().convert("RGB")
                    if i >= wanted[-1]:
                        break
                if picked:
                    return [picked[i] for i in sorted(picked)]
                container.seek(0)
            decoded = [frame.to_image() for frame in container.decode(stream)]
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise ImageError(f"Could not decode video {src}: {exc}. Check that it is a video file.") from exc
    if not decoded:
        raise ImageError(f"Video {src} has no frames.")
    return [decoded[i].convert("RGB") for i in segment_indices(len(decoded), num_segments)]
