"""Object-anchored positions (pfp_core.model.objects): leave and return captions as a shift of half the width
rotary pairs that follows the moving object."""
import numpy as np
import pytest
import torch
from dataclasses import replace

from pfp_core.config import encoder_config_for
from pfp_core.generation.generator import GenerationRequest, chunk_spans, latent_paths
from pfp_core.generation.storyboard import parse_storyboard, plan_chunks
from pfp_core.model.objects import caption_object_motion, object_path
from pfp_core.model.rope import axis_dims, rope_angles
from pfp_core.training import storyworld
from tests.model.test_camera import PX_PER_TOKEN, context_and_chunk, velocity


def leftmost_column(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.any(axis=0))[0])


def test_the_captions_object_path_is_where_the_moving_object_is():
    """For every frame whose caption moves an object, fully in view and clear of the others, the object's left
    edge has moved from its rest place (frame 0) by the path's shift; every other frame has shift 0."""
    checked = 0
    for seed in range(20):
        video = storyworld.make_story_video(storyworld.story_seed(seed), 8, "static")
        path = object_path(video.captions(), 1.0).numpy() * PX_PER_TOKEN
        for t, caption in enumerate(video.captions()):
            if not caption_object_motion(caption)[0]:
                assert path[t] == 0
                continue
            masks, rest = video.object_masks[:, t], video.object_masks[:, 0]
            moved = [i for i in range(len(masks)) if masks[i].any() and not np.array_equal(masks[i], rest[i])]
            whole = len(moved) == 1 and masks[moved[0]].sum() == rest[moved[0]].sum()  # not (un)covered by another
            columns = masks[moved[0]].any(axis=0) if whole else None
            if columns is None or columns[0] or columns[-1]:  # overlapping objects, or one partly out of view
                continue
            assert leftmost_column(masks[moved[0]]) - leftmost_column(rest[moved[0]]) == path[t], (seed, t)
            checked += 1
    assert checked > 50


def test_generation_plans_the_object_path_from_the_storyboard():
    storyboard = "0s: camera holds / 1s: red object leaves to the right / 2s: red object comes back from the right"
    plan = plan_chunks(parse_storyboard(storyboard), 3.0, 1.0)
    spans = chunk_spans(24, 8, 8, 1)
    request = GenerationRequest(torch.zeros(1, 3, 8, 32, 32), [c.prompt for c in plan], 24, 8, 160, object_speed=1.0)
    camera, objects = latent_paths(spans, request, 1)
    assert camera is None
    assert objects.tolist() == [0.0] * 8 + list(range(1, 9)) + list(range(7, -1, -1))


@pytest.mark.parametrize("caption,motion", [
    ("red object leaves to the left", (-1, False)), ("Blue object leaves to the right", (1, False)),
    ("green object comes back from the left", (1, True)), ("white object comes back from the right", (-1, True)),
    ("camera pans left", (0, False)), ("camera holds", (0, False))])
def test_caption_object_motion_reads_the_way_and_the_return(caption, motion):
    assert caption_object_motion(caption) == motion


def test_a_leave_starts_from_rest_and_a_return_ends_there():
    captions = ["camera holds"] + ["red object leaves to the left"] * 3 + ["red object comes back from the left"] * 3
    assert object_path(captions, 2.0).tolist() == [0, -2, -4, -6, -4, -2, 0]


def test_a_shift_moves_only_the_odd_width_pairs():
    head_dim = 128
    t_dim, h_dim, w_dim = axis_dims(head_dim)
    positions = torch.tensor([[[3.0, 2.0, 5.0], [4.0, 1.0, 7.0]]])
    plain = rope_angles(positions, head_dim)
    assert torch.equal(rope_angles(positions, head_dim, object_shift=torch.zeros(1, 2)), plain)
    shifted = rope_angles(positions, head_dim, object_shift=torch.tensor([[0.0, 3.0]]))
    moved = rope_angles(torch.tensor([[[3.0, 2.0, 5.0], [4.0, 1.0, 4.0]]]), head_dim)
    width = slice((t_dim + h_dim) // 2, None)
    assert torch.equal(shifted[..., :width.start], plain[..., :width.start])  # time and height stay
    assert torch.equal(shifted[..., width][..., 0::2], plain[..., width][..., 0::2])  # even pairs: the screen
    assert torch.allclose(shifted[..., width][..., 1::2], moved[..., width][..., 1::2])  # odd pairs: at rest
    assert shifted[0, 1, width][1::2].ne(plain[0, 1, width][1::2]).all()


def test_a_chunk_that_follows_an_object_reads_its_context_differently_and_a_zero_path_changes_nothing():
    dit, memory, chunk = context_and_chunk(None)
    still = replace(memory, object_path=torch.zeros(1, 8))
    assert torch.allclose(velocity(dit, memory, chunk), velocity(dit, still, chunk), atol=1e-6)
    returning = replace(memory, object_path=torch.tensor([[0.0, 0, 0, 0, 0, 0, -1, 0]]))
    assert not torch.allclose(velocity(dit, memory, chunk), velocity(dit, returning, chunk), atol=1e-4)
    # the path over the window's frames is never read: context tokens stay at shift 0
    history_moved = replace(memory, object_path=torch.tensor([[5.0, -3, 2, 1, 0, 4, -1, 0]]))
    assert torch.allclose(velocity(dit, returning, chunk), velocity(dit, history_moved, chunk), atol=1e-6)
