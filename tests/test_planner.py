import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pfp_core.model.attention import matmul_attention, use_attention
from pfp_core.config import DIT_CONFIGS, MEMORY_VARIANTS, DiTConfig, dit_config, encoder_config_for
from pfp_core.model.dit import WanDiT
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.planner import dit_param_count, encoder_param_count, format_plan_table, plan

RATES = ("4x4x2", "2x2x2", "2x2x1")


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def wan13() -> dict:
    return plan("wan2.1-1.3b", 832, 480, 16, 20, rate="4x4x2")


def test_wan13_20s_history_compresses_to_about_4k_tokens(wan13):
    assert wan13["history_latent_frames"] == 81 and wan13["tokens_per_latent_frame"] == 30 * 52
    assert wan13["full_history_tokens"] == 81 * 30 * 52
    assert wan13["memory_tokens"] == 41 * 8 * 13 <= 5000  # 30 token rows / 4 round up to 8 cells
    assert wan13["chunk_latent_frames"] == 21 and wan13["chunk_tokens"] == 21 * 30 * 52
    assert wan13["compression"] == pytest.approx(wan13["full_history_tokens"] / wan13["memory_tokens"], rel=1e-3)


def test_wan13_attention_and_flops_favour_memory(wan13):
    assert wan13["attention_flops_ratio"] > 10
    assert wan13["dit_flops_per_step_no_history"] < wan13["dit_flops_per_step_memory"]
    assert wan13["dit_flops_per_step_memory"] * 10 < wan13["dit_flops_per_step_full_history"]
    assert 0 < wan13["encoder_flops"] < wan13["dit_flops_per_step_memory"]


def test_plan_is_json_and_consistent(wan13):
    assert json.loads(json.dumps(wan13)) == wan13
    assert wan13["weights_gb"] == pytest.approx((wan13["dit_params"] + wan13["encoder_params"]) * 2 / 1e9, abs=1e-3)
    vram = wan13["vram_estimate_gb"]
    assert vram["all_on_gpu"] == pytest.approx(wan13["weights_gb"] + wan13["activation_gb"], abs=2e-3)
    assert wan13["activation_gb"] < vram["weights_offloaded"] < vram["all_on_gpu"]
    assert wan13["fits_12gb"] == {case: gb <= 12 for case, gb in vram.items()}
    assert wan13["notes"] and all(isinstance(note, str) for note in wan13["notes"])
    table = format_plan_table(wan13)
    assert "memory_tokens" in table and "4,264" in table and "notes:" in table


def test_cfg_batch_doubles_the_step_activations(wan13):
    single = plan("wan2.1-1.3b", 832, 480, 16, 20, batch=1)
    assert wan13["batch"] == 2 and wan13["activation_gb"] == pytest.approx(2 * single["activation_gb"], abs=2e-3)
    assert single["comfyui_12gb"][0]["phases_gb"]["dit_step"] < wan13["comfyui_12gb"][0]["phases_gb"]["dit_step"]


@pytest.mark.parametrize("model,fps,fits_in_bf16", [("wan2.1-1.3b", 16, True), ("wan2.2-5b", 24, False)])
def test_comfyui_settings_for_12gb_at_480p(model, fps, fits_in_bf16):
    rows = {row["setting"]: row for row in plan(model, 832, 480, fps, 20)["comfyui_12gb"]}
    for row in rows.values():
        assert row["peak_gb"] == max(row["phases_gb"].values()) == row["phases_gb"][row["peak_phase"]]
        assert row["fits_12gb"] == (row["peak_gb"] <= 12)
    resident, fp8 = rows["bf16 DiT, all resident"], rows["fp8 DiT, all resident"]
    partial, streamed = rows["bf16 DiT, partly streamed"], rows["bf16 DiT, all streamed, tiled decode"]
    assert resident["fits_12gb"] is fits_in_bf16
    assert fp8["fits_12gb"] and partial["fits_12gb"] and streamed["fits_12gb"]
    assert fp8["phases_gb"]["dit_step"] < resident["phases_gb"]["dit_step"]
    assert (partial["streamed_per_step_gb"] > 0) is not fits_in_bf16 and resident["streamed_per_step_gb"] == 0
    assert streamed["phases_gb"]["vae_decode"] < partial["phases_gb"]["vae_decode"]  # tiles
    assert partial["phases_gb"]["text_encode"] == 0 < resident["phases_gb"]["text_encode"]  # UMT5 on the CPU


def test_comfyui_rows_only_for_wan_vaes_and_shown_in_the_table(wan13):
    assert plan("tiny", 32, 32, 8, 4)["comfyui_12gb"] == []
    table = format_plan_table(wan13)
    assert "comfyui_12gb" in table and "bf16 DiT, all resident: peak" in table and "fits in 12 GB" in table


def test_bigger_models_need_offloading_for_12gb():
    big = plan("wan2.1-14b", 832, 480, 16, 20)
    assert big["fits_12gb"] == {"all_on_gpu": False, "weights_offloaded": True}
    assert plan("wan2.2-5b", 1280, 704, 24, 20)["tokens_per_latent_frame"] == 22 * 40  # 16x VAE


@pytest.mark.parametrize("name", list(DIT_CONFIGS))
def test_dit_param_count_matches_meta_module(name):
    for cfg in (dit_config(name), dataclasses.replace(dit_config(name), model_type="i2v")):
        with torch.device("meta"):
            model = WanDiT(cfg)
        assert dit_param_count(cfg) == numel(model), cfg.model_type


@pytest.mark.parametrize("name", list(DIT_CONFIGS))
def test_encoder_param_count_matches_meta_module(name):
    for rate in RATES:
        for variant in MEMORY_VARIANTS:
            cfg = encoder_config_for(name, rate, variant)
            with torch.device("meta"):
                encoder = MemoryEncoder(cfg)
            assert encoder_param_count(cfg) == numel(encoder), (rate, variant)
    assert plan(name, 64 * 16, 64 * 16, 16, 1.0)["dit_params"] == dit_param_count(dit_config(name))


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("frames,height,width", [(5, 12, 20), (8, 16, 16), (3, 6, 10)])
def test_memory_tokens_match_the_real_encoder(rate, frames, height, width):
    # tiny: space-to-depth VAE (2x spatial, 1x temporal), 8 fps; frames latent frames = (frames - 1) / 8 seconds
    planned = plan("tiny", 2 * width, 2 * height, 8, (frames - 1) / 8, rate=rate)
    assert (planned["history_latent_frames"], planned["latent_height"], planned["latent_width"]) == (frames, height, width)
    encoder = MemoryEncoder(encoder_config_for("tiny", rate)).eval()
    with torch.no_grad():
        memory = encoder.encode(torch.zeros(1, 16, frames, height, width), fps=8)
    assert memory.token_count == planned["memory_tokens"]
    assert memory.positions.shape == (planned["memory_tokens"], 3)


def test_counted_flops_match_flop_counter():
    planned = plan("tiny", 40, 24, 8, 2.0, chunk_seconds=0.25, text_tokens=32)
    torch.manual_seed(0)
    dit, encoder = WanDiT(dit_config("tiny")).eval(), MemoryEncoder(encoder_config_for("tiny")).eval()
    history = torch.randn(1, 16, planned["history_latent_frames"], planned["latent_height"], planned["latent_width"])
    chunk = torch.randn(1, 16, planned["chunk_latent_frames"], planned["latent_height"], planned["latent_width"])
    start = planned["history_latent_frames"]
    with torch.no_grad(), use_attention(matmul_attention):
        with FlopCounterMode(display=False) as encoder_count:
            memory = encoder.encode(history, fps=8)
        with FlopCounterMode(display=False) as dit_count:
            dit(chunk, torch.tensor([500.0]), torch.randn(1, 32, 4096), memory,
                torch.arange(start, start + chunk.shape[2]))
    assert memory.token_count == planned["memory_tokens"]
    assert 0.8 < dit_count.get_total_flops() / planned["dit_flops_per_step_memory"] < 1.25
    assert 0.8 < encoder_count.get_total_flops() / planned["encoder_flops"] < 1.25


def test_cached_chunk_flops_match_flop_counter():
    """The FLOP model of the clean-context path: one context stream plus every forward over the cached keys and
    values, counted on a real sampler run (2 steps with CFG)."""
    from dataclasses import replace

    from pfp_core.generation.pipeline import FlowChunkSampler, SamplerSettings
    from pfp_core.planner import chunk_flops
    from pfp_core.model.text import HashTextEncoder

    torch.manual_seed(0)
    dit = WanDiT(dit_config("tiny")).eval()
    encoder = MemoryEncoder(replace(encoder_config_for("tiny", "2x2x2"), clean_context=True)).eval()
    sampler = FlowChunkSampler(dit, HashTextEncoder(4096, 32), SamplerSettings(steps=2, cfg=2.0))
    chunk_shape = (1, 16, 4, 16, 16)
    with torch.no_grad(), use_attention(matmul_attention):
        memory = encoder.encode(torch.randn(1, 16, 16, 16, 16), fps=8)
        with FlopCounterMode(display=False) as count:
            sampler(memory, torch.arange(16, 20), "camera holds", chunk_shape, 0, lambda *progress: None)
    planned = chunk_flops(dit.config, 4 * 64, memory.token_count, 32, 2, 2, cached=True)
    assert 0.8 < count.get_total_flops() / planned < 1.25
    assert planned < chunk_flops(dit.config, 4 * 64, memory.token_count, 32, 2, 2, cached=False)


def test_unknown_model_is_one_line():
    with pytest.raises(ValueError) as error:
        plan("wan3-huge", 832, 480, 16, 20)
    message = str(error.value)
    assert "\n" not in message and message.startswith("model: 'wan3-huge' is unknown")
    assert "wan2.1-1.3b" in message


@pytest.mark.parametrize("field,kwargs,multiple", [
    ("width", dict(model="wan2.1-1.3b", width=830, height=480), "16"),
    ("height", dict(model="wan2.1-1.3b", width=832, height=488), "16"),
    ("height", dict(model="wan2.2-5b", width=1280, height=720), "32"),
])
def test_sizes_off_the_token_grid_name_the_field(field, kwargs, multiple):
    with pytest.raises(ValueError) as error:
        plan(fps=16, history_seconds=20, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{field}:") and multiple in message


@pytest.mark.parametrize("field", ["width", "height", "fps", "history_seconds", "chunk_seconds", "dtype_bytes",
                                   "text_tokens", "batch"])
def test_non_positive_numbers_name_the_field(field):
    kwargs = dict(model="wan2.1-1.3b", width=832, height=480, fps=16, history_seconds=20)
    kwargs[field] = 0
    with pytest.raises(ValueError) as error:
        plan(**kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{field}:")


def test_bad_rate_names_the_field():
    with pytest.raises(ValueError, match="^rate:"):
        plan("wan2.1-1.3b", 832, 480, 16, 20, rate="4x4")


def test_ram_estimate_grows_with_the_latents_only_and_as_image_with_every_frame():
    short = plan("wan2.1-1.3b", 832, 480, 16, 20, video_seconds=20)
    long = plan("wan2.1-1.3b", 832, 480, 16, 20, video_seconds=120)
    frames_bytes = (120 - 20) * 16 * 832 * 480 * 3 * (4 + 1)  # float32 IMAGE and the uint8 frames
    latent_bytes = (120 - 20) * 16 // 4 * 16 * 60 * 104 * 4  # fp32 Wan 2.1 latents, 4 frames each
    assert long["ram_estimate_gb"] - short["ram_estimate_gb"] == pytest.approx(2 * latent_bytes / 1e9, abs=2e-3)
    assert long["ram_as_image_gb"] - short["ram_as_image_gb"] == pytest.approx((frames_bytes + 2 * latent_bytes) / 1e9,
                                                                               abs=2e-3)
    assert short["ram_estimate_gb"] > short["weights_gb"]


def kept_for_backward(run, inputs: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves while `run(inputs)` executes under bf16 autocast, apart from the
    parameters and the inputs themselves (the caller owns those)."""
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if not isinstance(t, torch.nn.Parameter) and storage.data_ptr() != inputs.untyped_storage().data_ptr():
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        run(inputs)
    return sum(saved.values())


@pytest.mark.parametrize("dim,ffn", [(256, 1024), (384, 768)])  # head_dim 128, as in every Wan size
def test_block_activation_model_matches_what_autograd_keeps(dim, ffn):
    from pfp_core.model.dit import block_forward
    from pfp_core.planner import block_saved_bytes
    from pfp_core.model.rope import rope_angles

    cfg = DiTConfig("probe", dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=1)
    block = WanDiT(cfg).blocks[0]

    def kept(tokens: int) -> int:
        angles = rope_angles(torch.rand(1, tokens, 3) * 8, 128)
        return kept_for_backward(lambda x: block_forward(block, x, torch.randn(1, 6, dim), angles,
                                                         torch.randn(1, 8, dim), 0),
                                 torch.randn(1, tokens, dim, requires_grad=True))

    # the difference of two lengths drops the per-block constant (bf16 copies of the weights, counted apart)
    measured = kept(600) - kept(200)
    assert measured == pytest.approx(block_saved_bytes(cfg, 600) - block_saved_bytes(cfg, 200), rel=0.01)


@pytest.mark.parametrize("rate", RATES)
def test_encoder_activation_model_matches_what_autograd_keeps(rate):
    from pfp_core.planner import encoder_saved_bytes

    cfg = dataclasses.replace(encoder_config_for("tiny", rate), width=64)
    encoder = MemoryEncoder(cfg)
    kept = lambda frames: kept_for_backward(encoder, torch.randn(1, 16, frames, 32, 32))
    measured = kept(24) - kept(8)
    assert measured == pytest.approx(encoder_saved_bytes(cfg, (24, 32, 32)) - encoder_saved_bytes(cfg, (8, 32, 32)),
                                     rel=0.02)


@pytest.mark.parametrize("name", list(DIT_CONFIGS))
def test_lora_param_count_matches_the_adapters(name):
    from pfp_core.training.lora import lora_for
    from pfp_core.planner import lora_param_count

    with torch.device("meta"):
        lora = lora_for(WanDiT(dit_config(name)), rank=16, alpha=16)
    assert lora_param_count(dit_config(name), 16) == numel(lora)


def test_training_plan_for_wan13_lora_with_checkpointing_fits_24gb():
    from pfp_core.planner import format_training_table, training_plan

    figures = training_plan("wan2.1-1.3b", 832, 480, 16, 20, chunk_seconds=2, lora_rank=32)
    rows = {(r["mode"], r["grad_checkpointing"]): r for r in figures["rows"]}
    full, full_ckpt, lora, lora_ckpt = (rows[k] for k in (("full", False), ("full", True), ("lora r32", False),
                                                          ("lora r32", True)))
    assert lora_ckpt["fits_24gb"] and not full["fits_24gb"] and not full_ckpt["fits_24gb"]
    assert full_ckpt["activations_gb"] * 5 < full["activations_gb"] == lora["activations_gb"]
    assert full["adamw_gb"] == pytest.approx(8 * full["trained_params"] / 1e9, abs=1e-3)
    assert lora["adamw_gb"] * 20 < full["adamw_gb"] and lora["weights_gb"] < full["weights_gb"]
    for row in figures["rows"]:
        parts = sum(row[k] for k in ("weights_gb", "gradients_gb", "adamw_gb", "autocast_copies_gb", "activations_gb"))
        assert row["total_gb"] == pytest.approx(parts, abs=3e-3)
    assert figures["tokens"] == figures["chunk_tokens"] + figures["memory_tokens"] == 9 * 30 * 52 + 4264
    assert "lora r32" in format_training_table(figures)
    with pytest.raises(ValueError, match="^batch: must be a positive whole number"):
        training_plan("wan2.1-1.3b", 832, 480, 16, 20, batch=0)


def test_fsdp_training_plan_divides_weights_gradients_and_adamw_by_the_gpus():
    from pfp_core.planner import format_training_table, training_plan

    figures = training_plan("wan2.1-14b", 832, 480, 16, 20, chunk_seconds=2, gpus=8)
    rows = {(r["mode"], r["grad_checkpointing"]): r for r in figures["rows"]}
    full, fsdp = rows[("full", True)], rows[("fsdp x8", True)]
    for kind in ("weights_gb", "gradients_gb", "adamw_gb"):
        assert fsdp[kind] == pytest.approx(full[kind] / 8, abs=2e-3)
    assert fsdp["activations_gb"] == full["activations_gb"] and fsdp["autocast_copies_gb"] == 0
    assert 0 < fsdp["fsdp_gathered_gb"] < full["weights_gb"] / 4
    assert fsdp["total_gb"] < full["total_gb"] / 4 and fsdp["total_gb"] < 80 < full["total_gb"]  # one 80 GB GPU each
    assert "fsdp x8" in format_training_table(figures)
    assert not any(r["mode"].startswith("fsdp") for r in training_plan("tiny", 64, 64, 8, 4, chunk_seconds=1)["rows"])
