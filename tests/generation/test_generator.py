from dataclasses import replace

import pytest
import torch

from pfp_core.generation.chunk_store import ChunkStore, ChunkStoreError
from pfp_core.errors import GenerationCancelled
from pfp_core.config import VAEConfig, dit_config, encoder_config_for
from pfp_core.model.camera import reproject
from pfp_core.model.dit import WanDiT
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.generation.generator import (AutoregressiveGenerator, Callbacks, GenerationRequest, chunk_seed,
                                           chunk_spans, frame_grid, to_uint8)
from pfp_core.model.text import HashTextEncoder
from pfp_core.model.vae import SpaceToDepthVAE
from pfp_core.generation.pipeline import Engine, FlowChunkSampler, SamplerSettings


@pytest.mark.parametrize("total,start,chunk", [(64, 1, 8), (61, 1, 8), (20, 8, 8), (9, 1, 8), (30, 17, 4), (5, 1, 16)])
def test_chunks_tile_the_video_exactly(total, start, chunk):
    spans = chunk_spans(total, start, chunk)
    covered = [f for s in spans for f in range(s.first_frame, s.end_frame)]
    assert covered == list(range(start, total))  # every new frame once, none of the start frames again
    assert all(s.first_frame // chunk == s.index for s in spans)  # chunk k is video frames [kC, (k+1)C)


def test_video_must_be_longer_than_its_start():
    with pytest.raises(ValueError, match="^seconds:"):
        chunk_spans(8, 8, 4)


def make_request(start: torch.Tensor, total: int = 20, chunk: int = 4, window: int = 8) -> GenerationRequest:
    return GenerationRequest(start, ["a scene"] * 16, total, chunk, window, seed=5, steps_per_chunk=3, slab_frames=2)


def full_recompute(engine):
    """The paper's update, kept as the reference: the whole window re-encoded before every chunk."""
    return lambda window, offset: engine.encoder.encode(window.detach(), engine.fps)


def run(engine, store, request, callbacks=None, compress=None):
    sampler = FlowChunkSampler(engine.dit, engine.text_encoder, SamplerSettings(steps=3))
    compress = compress or engine.memory_updater()
    return AutoregressiveGenerator(compress, sampler, engine.vae, store, callbacks).run(request)


def test_frame_count_and_start_frame_preserved(random_engine, start_image):
    result = run(random_engine, None, make_request(start_image, total=19))
    assert result.frames.shape == (19, 32, 32, 3) and result.frames.dtype == torch.uint8
    expected_first = ((start_image[0, :, 0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(result.frames[0], expected_first)
    assert result.latents.shape[2] == 19


def test_history_window_bounds_memory(random_engine, start_image):
    """With an 8-frame window the memory stops growing: 4x4x2 gives 4 tokens per 2 frames."""
    result = run(random_engine, None, make_request(start_image, total=33, chunk=4, window=8))
    # history of 1, 4, 8, 12, ... frames; the window keeps the last 8 (4 slabs)
    assert result.memory_tokens == [4, 8, 16] + [16] * 6


def test_interrupted_run_resumes_to_identical_frames(random_engine, start_image, tmp_path):
    request = make_request(start_image)
    reference = run(random_engine, ChunkStore(tmp_path / "a", {"run": 1}), request)

    steps = []
    cancel_in_chunk_3 = Callbacks(should_cancel=lambda: len(steps) > 11, on_progress=lambda d, t: steps.append(d))
    with pytest.raises(GenerationCancelled):
        run(random_engine, ChunkStore(tmp_path / "b", {"run": 1}), request, cancel_in_chunk_3)
    kept = sorted(p.name for p in (tmp_path / "b").glob("chunk_*.safetensors"))
    assert kept == ["chunk_0000.safetensors", "chunk_0001.safetensors", "chunk_0002.safetensors"]
    assert not list((tmp_path / "b").glob("*.tmp"))

    resumed = run(random_engine, ChunkStore(tmp_path / "b", {"run": 1}), request)
    assert resumed.resumed_chunks == 3
    assert torch.equal(resumed.frames, reference.frames)


def test_a_folder_only_resumes_its_own_run(tmp_path):
    ChunkStore(tmp_path, {"seed": 1, "steps": 4})
    with pytest.raises(ChunkStoreError, match=r"^out: .* \(differs in seed\)"):
        ChunkStore(tmp_path, {"seed": 2, "steps": 4})


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ChunkStoreError, match="^out: cannot create"):
        ChunkStore(blocker / "chunks", {})


class CausalVideoVAE:
    """Behaves like Wan's causal VAE in time: the first frame is encoded alone, then 4 frames per latent (space
    is an exact space-to-depth, so decoded frames can be checked exactly)."""

    config = VAEConfig("causal_test", 16, 2, 4)

    def __init__(self):
        self.space = SpaceToDepthVAE()

    def encode(self, pixels):
        first, rest = pixels[:, :, :1], pixels[:, :, 1:]
        groups = rest.unflatten(2, (-1, 4)).mean(3) if rest.shape[2] else rest
        return self.space.encode(torch.cat((first, groups), dim=2))

    def decode(self, latents):
        frames = self.space.decode(latents)
        return torch.cat((frames[:, :, :1], frames[:, :, 1:].repeat_interleave(4, dim=2)), dim=2)


def test_causal_video_vae_gets_whole_latents_and_exact_frames(random_engine, start_image):
    vae = CausalVideoVAE()
    sampler = FlowChunkSampler(random_engine.dit, random_engine.text_encoder, SamplerSettings(steps=2))
    result = AutoregressiveGenerator(random_engine.memory_updater(), sampler, vae).run(
        make_request(start_image, total=33, chunk=8))
    assert result.frames.shape[0] == 33 and result.latents.shape[2] == 1 + 8
    # every chunk decoded as a continuation: 4 frames per latent, none of them the context's
    frames = result.frames
    assert torch.equal(frames[1], frames[4]) and not torch.equal(frames[4], frames[5])
    decoded = to_uint8(vae.space.decode(result.latents[:, :, 1:2]))
    assert torch.equal(frames[1], decoded[0])


def test_causal_alignment_errors_name_the_field():
    with pytest.raises(ValueError, match="^seconds: 32 frames; this VAE needs 1 \\+ 4k frames"):
        chunk_spans(32, 1, 8, temporal_factor=4)
    with pytest.raises(ValueError, match="^start_image: 4 frames"):
        chunk_spans(33, 4, 8, temporal_factor=4)
    with pytest.raises(ValueError, match="^chunk_seconds: 6 frames"):
        chunk_spans(33, 1, 6, temporal_factor=4)
    assert frame_grid(20, 5, 16, temporal_factor=4) == (321, 80)
    assert frame_grid(20, 5, 16) == (320, 80)
    spans = chunk_spans(321, 1, 80, temporal_factor=4)
    assert [(s.first_frame, s.end_frame) for s in spans] == [(1, 81), (81, 161), (161, 241), (241, 321)]


def test_latent_history_tail_and_window_cross_chunk_boundaries():
    from pfp_core.generation.generator import LatentHistory

    frames = torch.arange(11.0).view(1, 1, 11, 1, 1)
    history = LatentHistory(frames[:, :, :1])
    for start in (1, 5, 9):
        history.append(frames[:, :, start:start + 4])
    assert history.length == 11 and torch.equal(history.all(), frames)
    assert history.tail(6).flatten().tolist() == [5, 6, 7, 8, 9, 10]
    window, offset = history.window(7, slab=2)  # the last 7 would start at 4: a slab boundary already
    assert offset == 4 and window.flatten().tolist() == list(range(4, 11))
    window, offset = history.window(6, slab=2)  # would start at 5: moves back to 4
    assert offset == 4 and window.shape[2] == 7


@pytest.mark.parametrize("project", [True, False])
def test_generated_chunks_join_the_history_as_the_vae_encodes_their_frames(random_engine, start_image, project):
    request = make_request(start_image, total=9, chunk=4)
    request.project_chunks = project
    result = run(random_engine, None, request)
    generated = result.latents[:, :, 1:]
    reencoded = SpaceToDepthVAE().encode(result.frames[1:].permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    if project:  # in range, padding channels zero, exactly what real 8-bit frames give
        assert torch.equal(generated, reencoded) and not generated[:, 12:].any()
    else:
        assert not torch.equal(generated, reencoded)


def test_an_anchored_chunk_starts_from_the_last_frame_of_its_history(start_image):
    """A DiT whose velocity is zero (the untrained head) leaves the flow where it started: with an anchored
    encoder that is the last history latent plus the chunk's own scaled noise, not noise alone."""
    dit = WanDiT(dit_config("tiny")).eval()
    assert not dit.head.head.weight.any()
    encoder = MemoryEncoder(encoder_config_for("tiny", variant="none", recent_frames=1, anchor_noise=0.5)).eval()
    engine = Engine(dit, encoder, SpaceToDepthVAE(), HashTextEncoder(4096, 32))
    request = make_request(start_image, total=4, chunk=4)  # one chunk: frames 1-3 after the start image
    request.project_chunks = False
    latents = run(engine, None, request).latents
    noise = torch.randn((1, 16, 3, 16, 16), generator=torch.Generator().manual_seed(chunk_seed(request.seed, 0)))
    assert torch.allclose(latents[:, :, 1:], latents[:, :, :1] + 0.5 * noise, atol=1e-6)


def test_a_camera_placed_chunk_starts_from_the_last_frame_moved_as_its_prompt_pans(start_image):
    """With the zero velocity of the untrained head the chunk is its flow start: for a pair with camera_speed 1 and
    the prompt `camera pans right`, the start image moved one token (2 latent cells) further each frame, what comes
    into view at the image's mean, plus the chunk's scaled noise; a holding prompt leaves it where it was."""
    dit = WanDiT(dit_config("tiny")).eval()
    config = replace(encoder_config_for("tiny", variant="none", recent_frames=1, anchor_noise=0.5), camera_speed=1.0)
    engine = Engine(dit, MemoryEncoder(config).eval(), SpaceToDepthVAE(), HashTextEncoder(4096, 32))
    noise = torch.randn((1, 16, 3, 16, 16), generator=torch.Generator().manual_seed(chunk_seed(5, 0)))
    for prompt, cells in (("camera pans right", [2.0, 4.0, 6.0]), ("camera holds", [0.0, 0.0, 0.0])):
        request = GenerationRequest(start_image, [prompt], 4, 4, 8, seed=5, project_chunks=False, camera_speed=1.0)
        latents = run(engine, None, request).latents
        expected = reproject(latents[:, :, :1], torch.tensor([cells])) + 0.5 * noise
        assert torch.allclose(latents[:, :, 1:], expected, atol=1e-6), prompt
