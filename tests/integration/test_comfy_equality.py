"""pfp_core's DiT and ComfyUI's own WanModel give the same output on the same weights, with and without memory."""
import importlib
from dataclasses import replace

import pytest
import torch

from comfy_env import import_comfy_in_process

from pfp_core.model.checkpoint import save_model
from pfp_core.config import dit_config, encoder_config_for
from pfp_core.model.context import build_context
from pfp_core.model.dit import WanDiT
from pfp_core.model.encoder import MemoryEncoder


@pytest.fixture(scope="module")
def pack():
    return import_comfy_in_process()


@pytest.fixture(scope="module")
def models(pack, tmp_path_factory):
    import comfy.sd

    torch.manual_seed(0)
    dit = WanDiT(dit_config("tiny")).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)  # Wan's zero head would make every output 0
    path = save_model(dit, dit.config, tmp_path_factory.mktemp("m") / "tiny_dit.safetensors", "dit")
    comfy_model = comfy.sd.load_diffusion_model(str(path))
    encoder = MemoryEncoder(encoder_config_for("tiny", "2x2x2")).eval()
    return dit, comfy_model, encoder


def comfy_forward(model_patcher, x, sigma, context):
    """Through ComfyUI's apply path with the patcher's wrappers, as a sampler calls it."""
    base = model_patcher.model
    transformer_options = dict(model_patcher.model_options.get("transformer_options", {}))
    transformer_options["wrappers"] = model_patcher.wrappers
    return base.diffusion_model(x, sigma * 1000, context, transformer_options=transformer_options)


def test_comfy_detects_the_tiny_dit_as_wan(models):
    _, comfy_model, _ = models
    net = comfy_model.model.diffusion_model
    assert type(net).__name__ == "WanModel" and net.dim == 128 and net.num_heads == 1


@pytest.mark.parametrize("with_memory,recent_frames,clean,change,camera", [
    (False, 0, False, False, False), (True, 0, False, False, False), (True, 2, False, False, False),
    (True, 2, True, False, False), (True, 2, False, True, False), (True, 2, False, True, True),
    (True, 2, False, True, "objects")])
def test_pfp_core_and_comfy_wan_agree(pack, models, with_memory, recent_frames, clean, change, camera):
    """recent_frames > 0: the context of the next chunk, recent latents embedded inside each forward; clean: the
    context as its own clean stream (keys and values computed once per chunk); change: the noisy chunk read as
    its change from the last recent frame; camera: context and chunk placed in the world of a panning camera,
    the chunk read from the last frame moved with it (pfp_core.model.camera); "objects": besides, the chunk's
    tokens follow an object that comes back (pfp_core.model.objects)."""
    wan_memory = importlib.import_module(pack.__name__ + ".nodes.wan_memory")
    dit, comfy_model, encoder = models
    torch.manual_seed(1)
    x, sigma, context = torch.randn(1, 16, 3, 16, 16), torch.tensor([0.6]), torch.randn(1, 8, 4096)
    with torch.no_grad():
        if with_memory:
            config = replace(encoder.config, recent_frames=recent_frames, clean_context=clean, predict_change=change,
                             anchor_noise=0.5 if change else None)
            memory = build_context(config, lambda older: encoder.encode(older, 8), torch.randn(1, 16, 6, 16, 16), 8)
            if camera:
                memory = replace(memory, camera=torch.tensor([[0.0, 0, 1, 2, 3, 4, 5, 6, 7]]))
            if camera == "objects":
                memory = replace(memory, object_path=torch.tensor([[0.0, 0, 0, 0, 0, 0, -2, -1, 0]]))
            ours = dit(x, sigma * 1000, context, memory, torch.arange(6, 9))
            patched = wan_memory.with_memory(comfy_model, wan_memory.MemoryInjection(memory, first_frame_time=6))
            theirs = comfy_forward(patched, x, sigma, context)
            plain = comfy_forward(comfy_model, x, sigma, context)
            assert (plain - theirs).abs().max() > 1e-3  # the memory really went in
        else:
            ours = dit(x, sigma * 1000, context)
            theirs = comfy_forward(comfy_model, x, sigma, context)  # ComfyUI's own Wan code, no wrapper
    assert (ours - theirs).abs().max() <= 1e-4


def test_comfy_reuses_the_clean_context_within_a_sampling_run_only(pack, models):
    """One sampling run (one sigmas tensor in the transformer options) computes the context stream once; its
    steps match the standalone DiT; a new run starts a new cache."""
    wan_memory = importlib.import_module(pack.__name__ + ".nodes.wan_memory")
    dit, comfy_model, encoder = models
    torch.manual_seed(3)
    config = replace(encoder.config, recent_frames=2, clean_context=True)
    x, context = torch.randn(1, 16, 3, 16, 16), torch.randn(1, 8, 4096)
    with torch.no_grad():
        memory = build_context(config, lambda older: encoder.encode(older, 8), torch.randn(1, 16, 6, 16, 16), 8)
        injection = wan_memory.MemoryInjection(memory, first_frame_time=6)
        patched = wan_memory.with_memory(comfy_model, injection)
        patched.model_options["transformer_options"]["sample_sigmas"] = run_sigmas = torch.tensor([1.0, 0.5, 0.0])
        first_cache = None
        for sigma in run_sigmas[:2]:
            theirs = comfy_forward(patched, x, sigma[None], context)
            ours = dit(x, sigma[None] * 1000, context, memory, torch.arange(6, 9))
            assert (ours - theirs).abs().max() <= 1e-4
            cache = injection.runs.for_run(run_sigmas)
            assert cache.layers is not None and (first_cache is None or cache is first_cache)
            first_cache = cache
        assert injection.runs.for_run(torch.tensor([1.0, 0.0])) is not first_cache


def test_comfy_samples_an_anchored_chunk_from_the_last_frame_of_its_history(pack, tmp_path):
    """ComfyUI's own sampler starts an anchored encoder's chunk where pfp_core does: with Wan's zero head the
    velocity is 0, so the chunk it returns is its flow start, the last history latent plus the scaled noise."""
    import comfy.sd

    adapters = importlib.import_module(pack.__name__ + ".nodes.adapters")
    dit = WanDiT(dit_config("tiny")).eval()
    comfy_model = comfy.sd.load_diffusion_model(str(save_model(dit, dit.config, tmp_path / "zero.safetensors", "dit")))
    config = encoder_config_for("tiny", variant="none", recent_frames=2, anchor_noise=0.5)
    history = torch.randn(1, 16, 4, 16, 16)
    memory = build_context(config, None, history, 8)
    text = [[torch.zeros(1, 8, 4096), {}]]
    sampler = adapters.ComfyChunkSampler(comfy_model, {"holds": text}, text, 4, 1.0, "euler", "simple")
    chunk = sampler(memory, torch.arange(4, 7)[None], "holds", (1, 16, 3, 16, 16), 11, lambda *_: None)
    noise = torch.randn((1, 16, 3, 16, 16), generator=torch.Generator().manual_seed(11))
    assert torch.allclose(chunk, history[:, :, -1:] + 0.5 * noise, atol=1e-4)

