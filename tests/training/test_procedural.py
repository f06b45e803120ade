import numpy as np
import pytest
import torch

from pfp_core.training.procedural import (HELDOUT_SEED_BASE, TRAIN_SEEDS, ProceduralVideo, heldout_seed, make_video,
                                          video_batch)

FPS = 8
FRAMES = 96


def background_mse(a: ProceduralVideo, i: int, b: ProceduralVideo, j: int) -> float:
    """MSE over pixels where neither frame shows an object."""
    visible = ~(a.object_masks[i] | b.object_masks[j])
    diff = a.frames[i].astype(float) - b.frames[j].astype(float)
    return float((diff[visible] ** 2).mean())


def test_same_seed_gives_identical_bytes():
    a, b = make_video(7, FRAMES), make_video(7, FRAMES)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.object_masks.tobytes() == b.object_masks.tobytes()


def test_different_seeds_give_different_videos():
    a, b = make_video(7, FRAMES), make_video(8, FRAMES)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() > 10


def test_shapes_and_dtypes():
    video = make_video(1, 20, size=48, fps=12)
    assert video.frames.shape == (20, 48, 48, 3) and video.frames.dtype == np.uint8
    assert video.object_masks.shape == (20, 48, 48) and video.object_masks.dtype == np.bool_
    assert video.fps == 12


def test_video_batch_matches_frames_in_engine_convention():
    batch = video_batch([3, 4], frames=10, size=32)
    assert batch.shape == (2, 3, 10, 32, 32) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    expected = torch.from_numpy(make_video(4, 10).frames).float() / 127.5 - 1
    torch.testing.assert_close(batch[1].permute(1, 2, 3, 0), expected)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frames"):
        make_video(0, 0)
    with pytest.raises(ValueError, match="size"):
        make_video(0, 4, size=4)


def test_heldout_seeds_never_overlap_training():
    assert heldout_seed(0) == HELDOUT_SEED_BASE
    assert heldout_seed(0) not in TRAIN_SEEDS and heldout_seed(5) not in TRAIN_SEEDS
    assert len({heldout_seed(i) for i in range(100)}) == 100


def test_objects_leave_and_come_back():
    def leaves_and_returns(counts: np.ndarray) -> bool:
        seen = np.flatnonzero(counts > 0)
        # A gap of at least 4 frames with nothing visible, between two visible frames.
        return len(seen) > 0 and np.diff(seen).max(initial=0) > 4

    returning = sum(leaves_and_returns(make_video(seed, FRAMES).object_masks.sum(axis=(1, 2))) for seed in range(20))
    assert returning >= 15


def test_camera_returns_to_earlier_views():
    min_gap = 2 * FPS
    for seed in range(5):
        video, other = make_video(seed, FRAMES), make_video(seed + 100, FRAMES)
        revisit = min(background_mse(video, i, video, j)
                      for i in range(0, FRAMES, 4) for j in range(i + min_gap, FRAMES, 4))
        unrelated = np.mean([background_mse(video, i, other, i) for i in range(0, FRAMES, 8)])
        assert revisit < 0.01 * unrelated
        # The camera leaves: the middle of the video shows other parts of the world.
        assert background_mse(video, 0, video, FRAMES // 2) > 0.1 * unrelated


def test_fine_texture_below_the_pooled_cell_size():
    frames = make_video(2, 8, size=32).frames.astype(float)
    pooled = frames.reshape(8, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    upsampled = pooled.repeat(4, axis=1).repeat(4, axis=2)
    assert np.abs(frames - upsampled).mean() > 12


def test_lighting_is_constant_over_time():
    # The camera ends where it started: the same world pixels must come back with exactly the same values.
    for seed in range(5):
        video = make_video(seed, FRAMES)
        assert background_mse(video, 0, video, FRAMES - 1) == 0.0


def test_consecutive_frames_are_similar():
    video, other = make_video(11, FRAMES), make_video(12, FRAMES)
    frames = video.frames.astype(float)
    step = np.abs(np.diff(frames, axis=0)).mean()
    unrelated = np.abs(frames - other.frames.astype(float)).mean()
    assert step < 0.5 * unrelated


def test_static_camera_keeps_the_world_and_objects_of_the_seed():
    moving = make_video(5, 40, moving_camera=True)
    still = make_video(5, 40, moving_camera=False)
    assert (still.camera == still.camera[0]).all() and not (moving.camera == moving.camera[0]).all()
    assert np.array_equal(still.frames[0], moving.frames[0])  # same start view, same objects
    assert still.object_masks.any(axis=(1, 2)).sum() > 0
