import pytest
import torch
from safetensors import safe_open

from pfp_core.model.checkpoint import CheckpointError, load_dit
from pfp_core.config import dit_config
from pfp_core.training.distributed import Process
from pfp_core.model.dit import WanDiT
from pfp_core.training.export import DTYPES, export_dit, export_lora
from pfp_core.training.lora import attach, load_lora_into, lora_for, merge_into, read_lora, target_linears
from pfp_core.training.loop import TrainSettings, build_models, prepare, run_steps

CPU = Process(rank=0, world=1, device=torch.device("cpu"))


def lora_settings(out, base, **changes) -> TrainSettings:
    base_settings = dict(stage="pretrain", out=out, batch=2, history_frames=(8,), targets=2, chunk_frames=4, steps=3,
                         bf16=False, checkpoint_every=3, warmup=1, lr=1e-2, dit_init=base, lora_rank=4, lora_alpha=8.0)
    base_settings.update(changes)
    return TrainSettings(**base_settings)


def random_inputs():
    torch.manual_seed(1)
    return torch.randn(1, 16, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 3, 4096)


def tiny_dit(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    dit = WanDiT(dit_config("tiny")).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)
    return dit


def test_a_new_adapter_changes_nothing_and_a_trained_one_equals_its_merged_weights():
    dit, merged = tiny_dit(), tiny_dit()
    x, t, context = random_inputs()
    with torch.no_grad():
        before = dit(x, t, context)
        lora = lora_for(dit, rank=4, alpha=8.0)
        attach(lora, dit)
        assert torch.equal(dit(x, t, context), before)  # up starts at zero
        for up in lora.up:
            torch.nn.init.normal_(up, std=0.1)
        adapted = dit(x, t, context)
        merge_into(merged, lora)
        assert (adapted - before).abs().max() > 1e-2
        assert torch.allclose(merged(x, t, context), adapted, atol=1e-5)
    assert len(lora.names) == 4 * 10 and all(name.startswith("blocks.") for name in lora.names)


def test_lora_training_updates_only_the_adapters_and_the_encoder(tmp_path, wan_file):
    settings = lora_settings(tmp_path / "run", wan_file)
    run = prepare(settings, CPU)
    models = run.models
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in [*models.lora.parameters(), *models.encoder.parameters()]}
    base_before = {k: v.clone() for k, v in models.dit.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in models.encoder.state_dict().items()}
    run_steps(run, settings, CPU, progress=False)
    assert all(torch.equal(v, base_before[k]) for k, v in models.dit.state_dict().items())
    assert any(not torch.equal(v, encoder_before[k]) for k, v in models.encoder.state_dict().items())
    moved = {name for name, up in zip(models.lora.names, models.lora.up) if up.abs().max() > 0}
    # the empty prompt is one token: cross-attention's softmax over one key gives q and k (almost) no gradient
    assert {name for name in models.lora.names if not name.endswith(("cross_attn.q", "cross_attn.k"))} <= moved
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"lora.safetensors", "encoder.safetensors", "optimizer.safetensors"} <= files
    assert "dit.safetensors" not in files  # the base stays where it is; the LoRA names it


def test_bf16_lora_keeps_the_frozen_base_in_bf16_and_the_adapters_in_fp32(tmp_path, wan_file):
    models = build_models(lora_settings(tmp_path, wan_file, bf16=True))
    assert {m.weight.dtype for m in target_linears(models.dit).values()} == {torch.bfloat16}
    assert models.dit.blocks[0].modulation.dtype == torch.float32  # norms/modulation stay fp32 (CPU layer_norm)
    assert {p.dtype for p in models.trainable()} == {torch.float32}


def trained_lora_folder(tmp_path, wan_file):
    out = tmp_path / "run"
    run = prepare(lora_settings(out, wan_file), CPU)
    run_steps(run, lora_settings(out, wan_file), CPU, progress=False)
    return out, run.models.lora


def test_exported_lora_has_comfyui_keys_and_round_trips(tmp_path, wan_file):
    folder, lora = trained_lora_folder(tmp_path, wan_file)
    path = export_lora(folder, tmp_path / "pfp_lora.safetensors", DTYPES["fp32"])
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha")
    assert keys == {f"diffusion_model.{name}{suffix}" for name in lora.names for suffix in suffixes}
    loaded, metadata = read_lora(path)
    assert (loaded.rank, loaded.alpha) == (4, 8.0)
    by_name = lambda adapter: {n: (d, u) for n, d, u in zip(adapter.names, adapter.down, adapter.up)}
    mine = by_name(lora)
    assert all(torch.equal(d, mine[n][0]) and torch.equal(u, mine[n][1]) for n, (d, u) in by_name(loaded).items())
    assert metadata["base"] == str(wan_file.resolve())


def test_exported_dit_equals_base_plus_scaled_up_down(tmp_path, wan_file):
    folder, lora = trained_lora_folder(tmp_path, wan_file)
    base = load_dit(wan_file).state_dict()
    exported = load_dit(export_dit(folder, tmp_path / "dit_fp32.safetensors", DTYPES["fp32"])).state_dict()
    targets = {f"{name}.weight": i for i, name in enumerate(lora.names)}
    for key, weight in exported.items():
        if key in targets:
            i = targets[key]
            expected = base[key] + (8.0 / 4) * lora.up[i].detach() @ lora.down[i].detach()
            assert torch.allclose(weight, expected, atol=1e-6), key
            assert not torch.equal(weight, base[key])
        else:
            assert torch.equal(weight, base[key]), key
    half = load_dit(export_dit(folder, tmp_path / "dit_bf16.safetensors", DTYPES["bf16"])).state_dict()
    assert all(torch.equal(half[k], v.to(torch.bfloat16).float()) for k, v in exported.items())


def test_finetune_continues_the_pretrain_adapter_or_merges_it(tmp_path, wan_file):
    folder, lora = trained_lora_folder(tmp_path, wan_file)
    continued = build_models(lora_settings(tmp_path / "ft", None, stage="finetune", init_from=folder))
    assert all(torch.equal(a, b) for a, b in zip(continued.lora.parameters(), lora.parameters()))
    whole = build_models(lora_settings(tmp_path / "ft2", None, stage="finetune", init_from=folder, lora_rank=0,
                                       lora_alpha=None))
    merged = load_dit(export_dit(folder, tmp_path / "merged.safetensors", DTYPES["fp32"]))
    assert whole.lora is None and all(p.requires_grad for p in whole.dit.parameters())
    assert all(torch.equal(a, b) for a, b in zip(whole.dit.state_dict().values(), merged.state_dict().values()))
    with pytest.raises(CheckpointError, match="^init-from: lora.safetensors holds a LoRA of rank 4, alpha 8; pass "
                                              "--lora-rank 4 --lora-alpha 8"):
        build_models(lora_settings(tmp_path / "ft3", None, stage="finetune", init_from=folder, lora_rank=8))


def test_lora_needs_a_base_file_and_export_needs_a_lora(tmp_path, wan_file):
    with pytest.raises(ValueError, match="^lora-rank: a LoRA adapts a base DiT from a file; pass --dit-init"):
        TrainSettings(stage="pretrain", out=tmp_path, lora_rank=4)
    with pytest.raises(ValueError, match="^lora-alpha: only scales a LoRA; pass --lora-rank too"):
        TrainSettings(stage="pretrain", out=tmp_path, dit_init=wan_file, lora_alpha=8.0)
    full = tmp_path / "full"
    run = prepare(lora_settings(full, wan_file, lora_rank=0, lora_alpha=None, steps=1), CPU)
    run_steps(run, lora_settings(full, wan_file, lora_rank=0, lora_alpha=None, steps=1), CPU, progress=False)
    with pytest.raises(ValueError, match="^from: .* holds no lora.safetensors"):
        export_lora(full, tmp_path / "x.safetensors", torch.float32)
    with pytest.raises(CheckpointError, match="^lora: wan_tiny.safetensors has no 'diffusion_model.<module>"):
        read_lora(wan_file)


def test_an_adapter_for_other_modules_is_refused(tmp_path, wan_file):
    folder, _ = trained_lora_folder(tmp_path, wan_file)
    other = lora_for(tiny_dit(), rank=4, alpha=8.0)
    other.names = [name.replace("blocks.0.", "blocks.9.") for name in other.names]
    with pytest.raises(CheckpointError, match="^init-from: lora.safetensors adapts a DiT of another size or layout"):
        load_lora_into(other, folder / "lora.safetensors", "init-from")
