import base64
import io

import pytest
from PIL import Image

from conftest import EXAMPLE
from workbench import media
from workbench.errors import ImageError


def test_every_source_kind_gives_an_rgb_image(http_server):
    raw = EXAMPLE.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    rgba = Image.new("RGBA", (10, 10))
    for src in (str(EXAMPLE), EXAMPLE, raw, bytearray(raw), uri, f"{http_server}/shapes.png", rgba):
        img = media.load_image(src)
        assert img.mode == "RGB"
    assert media.load_image(str(EXAMPLE)).size == (640, 480)


def test_missing_and_unreadable_images_name_the_fix(tmp_path):
    with pytest.raises(ImageError, match="Image not found: .*Check the path"):
        media.load_image(tmp_path / "nope.png")
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        media.load_image(tmp_path / "fake.png")
    with pytest.raises(ImageError, match="is a directory"):
        media.load_image(tmp_path)
    truncated = EXAMPLE.read_bytes()[:200]
    with pytest.raises(ImageError, match="truncated|corrupt|not an image"):
        media.load_image(truncated)
    with pytest.raises(ImageError, match="Unsupported image type"):
        media.load_image(42)


def test_urls_that_fail_or_are_too_large(http_server):
    with pytest.raises(ImageError, match="server answered 404"):
        media.load_image(f"{http_server}/missing.png")
    with pytest.raises(ImageError, match="not an image"):
        media.load_image(f"{http_server}/notes.txt")
    with pytest.raises(ImageError, match=r"too large .*limit"):
        media.load_image(f"{http_server}/big.png", media.FetchLimits(max_bytes=1_000_000))
    with pytest.raises(ImageError, match="Could not fetch"):
        media.load_image("http://127.0.0.1:9/none.png", media.FetchLimits(timeout_s=2))


def test_too_many_pixels_is_refused():
    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, "PNG")
    with pytest.raises(ImageError, match="pixel limit"):
        media.load_image(buf.getvalue(), media.FetchLimits(max_pixels=10_000))


def test_segment_sampling_takes_segment_middles():
    assert media.segment_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert media.segment_indices(3, 8) == [0, 1, 2]
    assert media.segment_indices(0, 8) == []


def _write_video(path, frames=24):
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            arr = np.zeros((48, 64, 3), dtype=np.uint8)
            arr[..., 0] = i * 10  # red rises frame by frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_frames_are_sampled_in_order(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path)
    frames = media.load_video(path, num_segments=4)
    assert len(frames) == 4 and frames[0].size == (64, 48)
    reds = [f.getpixel((32, 24))[0] for f in frames]
    assert reds == sorted(reds) and reds[-1] - reds[0] > 100
    gif = tmp_path / "clip.gif"
    imgs = [Image.new("RGB", (20, 20), (i * 20, 0, 0)) for i in range(10)]
    imgs[0].save(gif, save_all=True, append_images=imgs[1:])
    assert len(media.load_video(gif, num_segments=5)) == 5
    with pytest.raises(ImageError, match="Video not found"):
        media.load_video(tmp_path / "nope.mp4")
    (tmp_path / "bad.mp4").write_text("nope")
    with pytest.raises(ImageError, match="Could not decode video"):
        media.load_video(tmp_path / "bad.mp4")
