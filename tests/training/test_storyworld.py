import numpy as np
import pytest

from pfp_core.training import storyworld
from pfp_core.generation.storyboard import parse_storyboard, plan_chunks


@pytest.mark.parametrize("scene", storyworld.SCENES)
def test_same_seed_same_bytes_and_one_caption_a_second(scene):
    video = storyworld.make_story_video(3, 8, scene)
    again = storyworld.make_story_video(3, 8, scene)
    assert np.array_equal(video.frames, again.frames) and video.events == again.events
    assert video.frames.shape == (64, 32, 32, 3) and len(video.events) == 8
    assert video.captions()[8:16] == [video.captions()[8]] * 8 and video.captions()[8].startswith(video.events[1])
    plan = plan_chunks(parse_storyboard(video.storyboard), 8.0, 1.0)
    # the storyboard parser reads the world's captions back, returns resolved as in training
    assert [chunk.prompt for chunk in plan] == video.captions()[::8]


@pytest.mark.parametrize("chunk_seconds", [1.0, 0.25])
def test_a_camera_return_is_captioned_with_the_way_the_camera_moves(chunk_seconds):
    returns = 0
    for seed in range(20):
        video = storyworld.make_story_video(seed, 8, "panning")
        plan = plan_chunks(parse_storyboard(video.storyboard), 8.0, chunk_seconds)
        frames = round(chunk_seconds * video.fps)
        assert [chunk.prompt for chunk in plan] == video.captions()[::frames]  # generation sees what training saw
        for chunk in plan:
            if "comes back" in chunk.prompt:
                first, last = round(chunk.start * video.fps), round(chunk.end * video.fps) - 1
                moved = video.camera[last] - video.camera[first - 1]
                assert chunk.prompt == f"camera comes back {'left' if moved < 0 else 'right'}" and moved != 0
                returns += 1
    assert returns >= 20


def test_pans_move_one_token_a_frame_and_come_back_exactly():
    for seed in range(20):
        video = storyworld.make_story_video(seed, 8, "panning")
        assert set(np.abs(np.diff(video.camera)).tolist()) <= {0, 4}
        assert all(video.camera[8 * s + 7] != video.camera[8 * s - 1] for s in range(1, 8)
                   if video.events[s] != "camera holds")
        returned = np.flatnonzero(video.camera_returned())
        if len(returned):  # back on the start view: the start frame again, up to sensor noise
            diff = video.frames[returned].astype(int) - video.frames[0].astype(int)
            assert np.abs(diff).max() <= 2 * storyworld.SENSOR_NOISE + 1


def test_an_object_comes_back_to_where_it_left_from():
    found = 0
    for seed in range(40):
        video = storyworld.make_story_video(seed, 8, "static")
        assert set(video.camera.tolist()) == {video.camera[0]}
        if len(video.object_masks) > 1:
            continue  # one object: nothing occludes it, so its mask is its place
        for start, index in video.returns:
            masks = video.object_masks[index]
            assert not masks[start - 1].any()  # out of view until it comes back
            assert np.array_equal(masks[start + 7], masks[7])  # at rest where it rested in the first second
            found += 1
    assert found >= 3


def test_every_frame_has_its_own_sensor_noise():
    video = storyworld.make_story_video(1, 2, "static")
    assert not np.array_equal(video.frames[0], video.frames[1])


@pytest.mark.parametrize("kwargs,field", [({"scene": "dolly"}, "scene"), ({"size": 30}, "size")])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        storyworld.make_story_video(0, 2, **kwargs)


def test_demo_video_pans_two_views_and_comes_back():
    video = storyworld.demo_video()
    assert video.events[1:3] == ["camera pans right"] * 2 and video.camera_returned().any()
    longer = storyworld.demo_video(12)  # the same video, going on
    assert np.array_equal(longer.frames[:64], video.frames) and longer.events[:8] == video.events
