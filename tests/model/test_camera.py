"""Camera-anchored context (pfp_core.model.camera): the story world's pans as world positions and reprojection."""
import numpy as np
import pytest
import torch

from pfp_core.config import dit_config, encoder_config_for
from pfp_core.model.camera import path_at, camera_path, caption_pan, reproject, world_positions
from pfp_core.model.context import build_context
from pfp_core.model.dit import WanDiT
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.model.vae import SpaceToDepthVAE
from pfp_core.training import procedural, storyworld

PX_PER_TOKEN = 4  # space-to-depth 2x, then the DiT's 2x2 patch


def panning_videos(count: int = 12) -> list[storyworld.StoryVideo]:
    return [storyworld.make_story_video(storyworld.story_seed(seed), 8, "panning") for seed in range(count)]


def test_the_captions_camera_path_is_the_story_worlds_camera():
    """Training reads the camera from the resolved captions; it must be where the world's camera really is."""
    for video in panning_videos():
        path = camera_path(video.captions(), 1.0).numpy() * PX_PER_TOKEN
        assert np.array_equal(path - path[0], video.camera - video.camera[0]), video.storyboard


@pytest.mark.parametrize("caption,way", [("camera pans left", -1), ("camera pans right", 1), ("camera holds", 0),
                                         ("camera comes back left", -1), ("Camera comes back right, slowly", 1),
                                         ("camera comes back", 0), ("red object leaves to the left", 0)])
def test_caption_pan_reads_the_way_of_a_pan(caption, way):
    assert caption_pan(caption) == way


def test_world_positions_move_each_frame_by_its_view_and_interpolate_between_frames():
    camera = torch.tensor([[0.0, 1.0, 3.0]])
    positions = torch.tensor([[0.0, 2.0, 5.0], [1.0, 2.0, 5.0], [2.0, 0.0, 0.0], [1.5, 1.0, 1.0]])
    world = world_positions(positions, camera)
    assert world.shape == (1, 4, 3)
    assert torch.equal(world[0, :, 2], torch.tensor([5.0, 6.0, 3.0, 3.0]))
    assert torch.equal(world[0, :, :2], positions[:, :2])  # time and height stay
    assert torch.equal(path_at(camera, torch.tensor([0.5])), torch.tensor([[0.5]]))


def test_reprojecting_a_frame_of_a_pan_gives_the_next_frame_and_wraps_what_comes_into_view():
    """One pan frame moves the view one token (2 latent cells): the last frame moved with it is the next frame on
    every column the view still shares with it (up to the frames' own sensor noise)."""
    vae = SpaceToDepthVAE()
    video = next(v for v in panning_videos() if v.camera[9] > v.camera[8])  # a pan right at frame 9
    latents = vae.encode(procedural.to_pixels(video.frames[None, 8:10]))
    moved = reproject(latents[:, :, :1], torch.tensor([[2.0]]))
    assert moved.shape == latents[:, :, 1:].shape
    shared = (moved - latents[:, :, 1:])[..., :-2].abs().max()
    unmoved = (latents[:, :, :1] - latents[:, :, 1:])[..., :-2].abs().max()
    assert shared < 0.08 < unmoved  # sensor noise is +-4 levels on each frame: at most 8/127.5 apart
    assert torch.equal(moved[..., -2:], latents[:, :, :1, :, :2])  # what comes into view left the other side
    assert torch.equal(reproject(latents[:, :, :1], torch.tensor([[-2.0]]))[..., :2], latents[:, :, :1, :, -2:])
    assert torch.equal(reproject(latents[:, :, :1], torch.zeros(1, 3)), latents[:, :, :1].expand(-1, -1, 3, -1, -1))


def context_and_chunk(camera: torch.Tensor | None):
    """A 2x2x2 pair with 2 recent frames, a panning history of 6 latent frames and its next 2-frame chunk."""
    torch.manual_seed(0)
    config = encoder_config_for("tiny", rate="2x2x2", recent_frames=2, anchor_noise=0.5, predict_change=True)
    encoder, dit = MemoryEncoder(config).eval(), WanDiT(dit_config("tiny")).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.02)
    video = panning_videos()[0]
    latents = SpaceToDepthVAE().encode(procedural.to_pixels(video.frames[None, :8]))
    memory = build_context(config, lambda older: encoder.encode(older, 8), latents[:, :, :6], 8)
    if camera is not None:
        memory.camera = camera
    return dit, memory, latents[:, :, 6:]


def velocity(dit, memory, chunk):
    text = torch.zeros(1, 1, 4096)
    with torch.no_grad():
        return dit(memory.flow_start(torch.zeros_like(chunk)) + 0.1 * chunk, torch.tensor([500.0]), text, memory,
                   torch.arange(6, 8)[None])


def test_a_held_camera_reads_as_screen_positions_and_only_camera_differences_matter():
    dit, screen, chunk = context_and_chunk(None)
    held = context_and_chunk(torch.zeros(1, 8))[1]
    assert torch.allclose(velocity(dit, screen, chunk), velocity(dit, held, chunk), atol=1e-5)
    panning = torch.tensor([[0.0, 0, 1, 2, 3, 4, 5, 6]])
    moved = context_and_chunk(panning)[1]
    shifted = context_and_chunk(panning + 7.0)[1]  # the same pan seen from elsewhere in the world
    assert torch.allclose(velocity(dit, moved, chunk), velocity(dit, shifted, chunk), atol=1e-4)
    assert not torch.allclose(velocity(dit, moved, chunk), velocity(dit, screen, chunk), atol=1e-3)
