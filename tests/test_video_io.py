import cv2
import numpy as np
import pytest

from pfp_core.video_io import VideoReadError, load_image, read_video, resize_frames, save_image, write_video


def smooth_frames(frames: int = 12, height: int = 32, width: int = 48) -> np.ndarray:
    """A slowly moving colour gradient: easy for a lossy codec."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    red = 128 + 100 * np.sin((x + 2 * t) / 16)
    green = 128 + 100 * np.cos((y - t) / 12)
    blue = 128 + 60 * np.sin((x + y) / 20)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def random_image(height: int = 17, width: int = 23) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_mp4_round_trip(tmp_path):
    frames = smooth_frames()
    path = write_video(frames, tmp_path / "clip.mp4", fps=8)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == 8.0
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 5


def test_fractional_fps_survives(tmp_path):
    _, fps = read_video(write_video(smooth_frames(4), tmp_path / "clip.mp4", fps=12.5))
    assert fps == 12.5


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = smooth_frames(6, height=33, width=35)
    decoded, _ = read_video(write_video(frames, tmp_path / "odd.mp4", fps=8))
    assert decoded.shape == (6, 34, 36, 3)
    assert np.abs(decoded[:, :33, :35].astype(int) - frames.astype(int)).mean() < 5


def test_write_leaves_no_temporary_files(tmp_path):
    write_video(smooth_frames(4), tmp_path / "a.mp4", fps=8)
    save_image(random_image(), tmp_path / "b.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.png"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_video(smooth_frames(4), tmp_path / "a.mp4", fps=8)
    before = path.read_bytes()

    def broken_cvt_color(*args, **kwargs):
        raise RuntimeError("crash mid-write")

    monkeypatch.setattr(cv2, "cvtColor", broken_cvt_color)
    with pytest.raises(RuntimeError):
        write_video(smooth_frames(4), path, fps=8)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_wrong_dtype_names_frames(tmp_path):
    with pytest.raises(ValueError, match="^frames: expected uint8 \\[T, H, W, 3\\], got float32"):
        write_video(smooth_frames().astype(np.float32), tmp_path / "x.mp4", fps=8)
    with pytest.raises(ValueError, match="^frames:"):
        write_video(smooth_frames()[..., :2], tmp_path / "x.mp4", fps=8)
    assert not any(tmp_path.iterdir())


def test_corrupt_video_raises_with_the_path(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="corrupt.mp4") as caught:
        read_video(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_video_raises_with_the_path(tmp_path):
    with pytest.raises(VideoReadError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


def test_png_round_trip_is_exact(tmp_path):
    image = random_image()
    path = save_image(image, tmp_path / "image.png")
    np.testing.assert_array_equal(load_image(path), image)


def test_grayscale_and_rgba_load_as_rgb(tmp_path):
    gray = random_image()[..., 0]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgba = np.dstack([random_image(), np.full(gray.shape, 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])  # cv2 wants BGRA
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png"), np.dstack([gray] * 3))
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgba[..., :3])


def test_unreadable_image_raises_naming_image_and_path(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    for bad in (path, tmp_path / "absent.png"):
        with pytest.raises(ValueError, match="^image: .*" + bad.name) as caught:
            load_image(bad)
        assert str(bad) in str(caught.value)


def test_save_image_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="^image:"):
        save_image(random_image()[..., 0], tmp_path / "x.png")


def test_resize_frames():
    frames = smooth_frames(3, height=32, width=48)
    smaller = resize_frames(frames, 16, 24)
    larger = resize_frames(frames, 64, 96)
    assert smaller.shape == (3, 16, 24, 3) and larger.shape == (3, 64, 96, 3)
    assert smaller.dtype == larger.dtype == np.uint8
    # Area averaging: each output pixel is the mean of a 2x2 block.
    expected = frames.reshape(3, 16, 2, 24, 2, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(smaller - expected).max() <= 1
    assert np.abs(larger[:, ::2, ::2].astype(int) - frames.astype(int)).mean() < 5


def test_resize_keeps_a_single_channel_axis():
    assert resize_frames(np.zeros((2, 8, 8, 1), np.uint8), 4, 4).shape == (2, 4, 4, 1)
