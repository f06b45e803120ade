"""The clean-context pattern: context tokens at timestep 0 attend among themselves only, so their keys and values
are computed once per chunk and reused by every denoising step and both CFG halves, with the same result."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pfp_core.model.dit as dit_module
from pfp_core.config import dit_config, encoder_config_for
from pfp_core.model.context import build_context
from pfp_core.model.dit import ContextCache, WanDiT
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.model.memory import load_memory, save_memory
from pfp_core.generation.pipeline import FlowChunkSampler, SamplerSettings
from pfp_core.model.text import HashTextEncoder
from pfp_core.model.checkpoint import load_encoder
from pfp_core.training.loop import TrainSettings, build_models, train


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    dit = WanDiT(dit_config("tiny")).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)  # Wan's zero head would make every output 0
    encoder = MemoryEncoder(encoder_config_for("tiny", "2x2x2", recent_frames=2, clean_context=True)).eval()
    return dit, encoder


def context_of(encoder: MemoryEncoder, clean: bool = True):
    config = replace(encoder.config, clean_context=clean)
    torch.manual_seed(2)
    with torch.no_grad():
        return build_context(config, lambda older: encoder.encode(older, 8), torch.randn(1, 16, 10, 16, 16), 8)


def test_cached_keys_and_values_give_the_uncached_output_at_every_step(pair):
    dit, encoder = pair
    memory = context_of(encoder)
    x, text = torch.randn(2, 16, 4, 16, 16), torch.randn(2, 5, 4096)
    cache, times = ContextCache(), torch.arange(10, 14)
    with torch.no_grad():
        for sigma in (1.0, 0.6, 0.2):
            timestep = torch.full((2,), sigma * 1000)
            cached = dit(x, timestep, text, memory, times, context_cache=cache)
            fresh = dit(x, timestep, text, memory, times)
            assert torch.equal(cached, fresh)
    assert len(cache.layers) == len(dit.blocks)


def test_context_stream_ignores_the_chunk_and_the_noise_level(pair):
    """What makes the cache valid: the context's keys and values depend on the memory alone."""
    dit, encoder = pair
    memory = context_of(encoder)
    with torch.no_grad():
        layers = dit_module.context_stream(dit, memory, torch.float32)
        again = dit_module.context_stream(dit, memory, torch.float32)
    assert all(torch.equal(a, b) for (ka, va), (kb, vb) in zip(layers, again) for a, b in ((ka, kb), (va, vb)))
    assert layers[0][0].shape == (1, memory.token_count, dit.config.dim)


def test_clean_context_still_informs_the_chunk_and_differs_from_joint(pair):
    dit, encoder = pair
    x, text, times = torch.randn(1, 16, 4, 16, 16), torch.randn(1, 5, 4096), torch.arange(10, 14)
    timestep = torch.full((1,), 700.0)
    with torch.no_grad():
        clean = dit(x, timestep, text, context_of(encoder, True), times)
        joint = dit(x, timestep, text, context_of(encoder, False), times)
        none = dit(x, timestep, text, None, times)
    assert (clean - none).abs().max() > 1e-3 and (clean - joint).abs().max() > 1e-3


def test_a_chunk_computes_the_context_stream_once_for_all_steps_and_both_cfg_halves(pair, monkeypatch):
    dit, encoder = pair
    calls = []
    real = dit_module.context_stream
    monkeypatch.setattr(dit_module, "context_stream", lambda *args: calls.append(1) or real(*args))
    sampler = FlowChunkSampler(dit, HashTextEncoder(4096, 32), SamplerSettings(steps=4, cfg=3.0))
    sampler(context_of(encoder), torch.arange(10, 14), "camera holds", (1, 16, 4, 16, 16), seed=0,
            on_step=lambda *progress: None)
    assert len(calls) == 1


def test_saved_memory_keeps_the_pattern(pair, tmp_path: Path):
    _, encoder = pair
    assert load_memory(save_memory(context_of(encoder), tmp_path / "m.safetensors")).clean_context
    assert not load_memory(save_memory(context_of(encoder, False), tmp_path / "j.safetensors")).clean_context


def test_training_with_clean_context_records_it_and_reaches_the_encoder(tmp_path: Path):
    settings = TrainSettings(stage="finetune", out=tmp_path / "run", steps=2, batch=1, history_frames=(8,),
                             recent_frames=2, clean_context=True, rate="2x2x2", world="story", checkpoint_every=1,
                             retrieval_mix=0.0, bf16=False)
    before = {name: tensor.clone() for name, tensor in build_models(settings).encoder.state_dict().items()}
    train(settings, progress=False)
    trained = load_encoder(tmp_path / "run" / "encoder.safetensors")
    assert trained.config.clean_context
    moved = [name for name, tensor in trained.state_dict().items() if not torch.equal(tensor, before[name])]
    assert len(moved) > len(before) // 2  # the loss reached the encoder through the context stream
