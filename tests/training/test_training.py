
import contextlib
from dataclasses import replace
import math
import json
import random
import resource
import signal

import numpy as np
import pytest
import torch
from conftest import write_wan_file
from safetensors.torch import save_file

from pfp_core.training import loop, procedural, storyworld
from pfp_core.model.checkpoint import CheckpointError, load_encoder
from pfp_core.config import DiTConfig
from pfp_core.model.dit import WanDiT
from pfp_core.training.loop import (TrainSettings, build_models, chunk_noise, encode_memory, next_chunk_loss,
                                    recycled_history, retrieval_loss, set_grad_checkpointing, step_rng, story_clips,
                                    train, train_step, unrolled_loss)
from pfp_core.model.text import HashTextEncoder
from pfp_core.model.vae import SpaceToDepthVAE
from pfp_core.training.text_embeddings import FrameCaptions


def small(tmp_path, **changes) -> TrainSettings:
    base = dict(stage="pretrain", out=tmp_path, batch=2, history_frames=(8,), targets=2, chunk_frames=4,
                bf16=False, checkpoint_every=3, warmup=1, lr=2e-3)
    base.update(changes)
    return TrainSettings(**base)


def fixed_retrieval_loss(models, settings) -> float:
    latents = SpaceToDepthVAE().encode(procedural.video_batch([procedural.heldout_seed(i) for i in range(4)], 8))
    with torch.no_grad():
        return retrieval_loss(models, latents, settings, torch.Generator().manual_seed(0)).item()


def test_retrieval_loss_decreases_on_a_tiny_run(tmp_path):
    settings = small(tmp_path, steps=40)
    models = build_models(settings)
    before = fixed_retrieval_loss(models, settings)
    optimizer = torch.optim.AdamW(models.parameters(), lr=settings.lr)
    for step in range(settings.steps):
        train_step(models, optimizer, settings, step)
    after = fixed_retrieval_loss(models, settings)
    assert after < 0.8 * before


@pytest.mark.parametrize("stage,lora", [("pretrain", False), ("finetune", False), ("finetune", True)])
def test_resume_continues_the_same_loss_curve(tmp_path, wan_file, stage, lora):
    extra = dict(dit_init=wan_file, lora_rank=4, grad_checkpointing=True) if lora else {}
    straight = train(small(tmp_path / "a", stage=stage, steps=6, **extra), progress=False)
    first_half = train(small(tmp_path / "b", stage=stage, steps=3, **extra), progress=False)
    second_half = train(small(tmp_path / "b", stage=stage, steps=6, **extra), progress=False)
    assert len(second_half) == 3
    assert first_half + second_half == pytest.approx(straight, abs=1e-5)
    assert len((tmp_path / "b" / "loss.jsonl").read_text().splitlines()) == 6


@contextlib.contextmanager
def file_size_limit(size: int):
    """Every file this process writes is capped at `size` bytes (RLIMIT_FSIZE), as on a disk with that much room:
    a write past it fails with EFBIG instead of killing the process with SIGXFSZ."""
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def logged(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "loss.jsonl").read_text().splitlines()]


def test_steps_logged_before_a_failed_checkpoint_write_are_not_logged_twice_on_resume(tmp_path):
    """Steps 3-5 are logged, then the checkpoint write fails (files capped at 100 kB, the DiT is 6 MB): the step-2
    checkpoint stays, and the resumed run logs steps 3-5 once, with the losses of an uninterrupted run."""
    straight = train(small(tmp_path / "a", steps=6), progress=False)
    train(small(tmp_path / "b", steps=3), progress=False)
    with file_size_limit(100_000), pytest.raises(OSError, match="File too large"):
        train(small(tmp_path / "b", steps=6), progress=False)
    assert [entry["step"] for entry in logged(tmp_path / "b")] == list(range(6))  # the log ran ahead of the checkpoint
    resumed = train(small(tmp_path / "b", steps=6), progress=False)
    assert len(resumed) == 3
    entries = logged(tmp_path / "b")
    assert [entry["step"] for entry in entries] == list(range(6))
    assert [entry["loss"] for entry in entries] == pytest.approx(straight, abs=1e-5)


def test_a_checkpoint_torn_by_a_failed_write_is_refused_on_resume(tmp_path):
    """Files capped at 8 MB: the new DiT (6 MB) and encoder land, the optimizer state (twice the parameters) does
    not, so the folder holds step-5 weights beside a step-2 optimizer. Resuming would mix them: one line says so."""
    train(small(tmp_path, steps=3), progress=False)
    with file_size_limit(8_000_000), pytest.raises(OSError, match="File too large"):
        train(small(tmp_path, steps=6), progress=False)
    with pytest.raises(CheckpointError, match=r"^out: .* torn by a failed write \(dit.safetensors at step 5, "
                                              r"optimizer.safetensors at step 2\)"):
        train(small(tmp_path, steps=8), progress=False)


def test_no_memory_baseline_trains_the_dit_alone(tmp_path):
    settings = small(tmp_path, steps=2, use_memory=False)
    losses = train(settings, progress=False)
    assert len(losses) == 2 and all(l > 0 for l in losses)
    assert not (tmp_path / "encoder.safetensors").exists() and (tmp_path / "dit.safetensors").exists()


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(ValueError, match="^stage:"):
        TrainSettings(stage="warmup", out=tmp_path)


def gradients_and_saved_bytes(models, settings) -> tuple[dict[str, torch.Tensor], int]:
    """One backward of a fixed retrieval batch; also the bytes autograd kept for it."""
    latents = SpaceToDepthVAE().encode(procedural.video_batch([procedural.heldout_seed(i) for i in range(2)], 8))
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    models.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = retrieval_loss(models, latents, settings, torch.Generator().manual_seed(0))
    loss.backward()
    return {n: p.grad.clone() for n, p in models.named_parameters() if p.grad is not None}, sum(saved.values())


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_less(tmp_path, wan_file, lora):
    settings = small(tmp_path, dit_init=wan_file, lora_rank=4 if lora else 0)
    models = build_models(settings)
    plain, plain_bytes = gradients_and_saved_bytes(models, settings)
    set_grad_checkpointing(models, True)
    recomputed, recomputed_bytes = gradients_and_saved_bytes(models, settings)
    assert plain.keys() == recomputed.keys() and any(n.startswith("encoder.hr.") for n in plain)
    for name, grad in plain.items():
        assert torch.allclose(recomputed[name], grad, rtol=1e-5, atol=1e-8), name
    assert recomputed_bytes < 0.5 * plain_bytes


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path):
    settings = small(tmp_path, bf16=True, device="cpu")
    models = build_models(settings)
    seen = []
    models.dit.blocks[0].ffn[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = models.dit.blocks[0].ffn[0].weight.detach().clone()
    train_step(models, torch.optim.AdamW(models.parameters(), lr=1e-3), settings, 0)
    assert seen == [torch.bfloat16]  # the matmuls ran in bf16 ...
    assert {p.dtype for p in models.parameters()} == {torch.float32}  # ... the weights stay fp32 and move
    assert not torch.equal(models.dit.blocks[0].ffn[0].weight, before)


def test_each_rank_draws_its_own_batches_and_rank_0_those_of_a_single_process(tmp_path):
    settings = small(tmp_path)
    draws = lambda step, rank: [step_rng(settings, step, rank).random() for _ in range(3)]
    assert step_rng(settings, 5).random() == random.Random(settings.seed * 1_000_003 + 5).random()
    assert draws(5, 0) == draws(5, 0) and draws(5, 0) != draws(5, 1) != draws(6, 1)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
def test_dit_init_loads_the_original_and_comfyui_layouts(tmp_path, prefix):
    path = tmp_path / "wan.safetensors"
    written = write_wan_file(path, prefix=prefix)
    settings = small(tmp_path / "out", dit_init=path, model="wan2.1-14b")
    assert settings.model == "tiny"  # the file decides the size
    models = build_models(settings)
    assert all(torch.equal(a, b) for a, b in zip(models.dit.state_dict().values(), written.state_dict().values()))
    assert models.encoder.config.dim == written.config.dim


def test_dit_init_reads_a_folder_of_shards(tmp_path):
    whole = write_wan_file(tmp_path / "whole.safetensors").state_dict()
    names = sorted(whole)
    (tmp_path / "shards").mkdir()
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = tmp_path / "shards" / f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: whole[k] for k in part}, str(shard))
    models = build_models(small(tmp_path / "out", dit_init=tmp_path / "shards"))
    assert all(torch.equal(models.dit.state_dict()[k], v) for k, v in whole.items())


def foreign_file(tmp_path, kind: str):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "diffusers":
        save_file({"condition_embedder.time_embedder.linear_1.weight": torch.zeros(4, 4)}, str(path))
    elif kind == "fp8":
        tensors = write_wan_file(tmp_path / "w.safetensors").state_dict()
        save_file({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}, str(path))
    elif kind == "wide":
        save_file(WanDiT(DiTConfig("x", dim=256, ffn_dim=256, num_heads=2, num_layers=1)).state_dict(), str(path))
    elif kind == "pickle":
        torch.save({"w": torch.zeros(1)}, path)
    return path


@pytest.mark.parametrize("kind,message", [
    ("diffusers", r"^dit-init: diffusers is not a Wan DiT \(missing 'head.modulation'\).*not diffusers"),
    ("fp8", r"^dit-init: fp8.safetensors holds fp8 weights.*bf16, fp16 or fp32 release"),
    ("wide", r"^dit-init: a DiT of width 256, 1 layers, 16 input channels \(t2v\) is not a size training knows"),
    ("pickle", r"^dit-init: pickle.safetensors is a pickle"),
    ("missing", r"^dit-init: file not found"),
])
def test_wrong_dit_init_files_are_one_clear_line(tmp_path, kind, message):
    with pytest.raises(ValueError, match=message) as error:
        path = tmp_path / "no.safetensors" if kind == "missing" else foreign_file(tmp_path, kind)
        small(tmp_path / "out", dit_init=path)
    assert "\n" not in str(error.value)


def test_sliding_window_baseline_sees_only_the_recent_latents(tmp_path):
    settings = small(tmp_path, stage="finetune", steps=2, use_memory=False, retrieval_mix=0.0, context_window=2)
    models = build_models(settings)
    history = torch.randn(1, 16, 8, 16, 16)
    memory = encode_memory(models, history, settings)
    assert memory.token_count == 2 * 8 * 8  # two latent frames of 8x8 DiT patches
    assert memory.recent_start == 6 and torch.equal(memory.recent_latents, history[:, :, 6:])  # true times
    changed = history.clone()
    changed[:, :, :6] = 0  # frames outside the window do not reach the DiT
    assert torch.equal(encode_memory(models, changed, settings).recent_latents, memory.recent_latents)
    losses = train(settings, progress=False)
    assert len(losses) == 2 and not (tmp_path / "encoder.safetensors").exists()


def test_sliding_window_needs_a_memoryless_finetune(tmp_path):
    with pytest.raises(ValueError, match="^context-window:"):
        small(tmp_path, stage="finetune", context_window=2)


def test_an_anchored_finetune_learns_the_change_from_the_last_frame_and_records_it(tmp_path):
    """With zero velocity (the untrained head) the loss is the distance from the flow's start to the chunk: from the
    last frame plus half-scale noise it is far smaller than from pure noise on a story-world clip."""
    anchored = small(tmp_path / "a", stage="finetune", steps=2, world="story", recent_frames=1, anchor_noise=0.5,
                     rate="2x2x2", retrieval_mix=0.0)
    plain = small(tmp_path / "p", stage="finetune", steps=2, world="story", recent_frames=1, rate="2x2x2",
                  retrieval_mix=0.0)
    clip = storyworld.make_story_video(storyworld.story_seed(3), 2, "static").frames[:12]
    latents = SpaceToDepthVAE().encode(procedural.to_pixels(clip[None]))
    losses = {}
    for name, settings in (("anchored", anchored), ("plain", plain)):
        with torch.no_grad():
            losses[name] = next_chunk_loss(build_models(settings), latents, settings, torch.Generator().manual_seed(0))
    assert losses["anchored"] < 0.5 * losses["plain"]
    train(anchored, progress=False)
    assert load_encoder(tmp_path / "a" / "encoder.safetensors").config.anchor_noise == 0.5


def test_anchor_noise_needs_recent_frames_in_a_finetune(tmp_path):
    with pytest.raises(ValueError, match="^anchor-noise: .* --recent-frames"):
        small(tmp_path, stage="finetune", anchor_noise=0.5)
    with pytest.raises(ValueError, match="^anchor-noise:"):
        small(tmp_path, stage="pretrain", recent_frames=2, anchor_noise=0.5)


def test_a_rollout_step_continues_a_history_that_ends_in_the_models_own_chunks(tmp_path):
    """The recycled history keeps the real past and replaces its last frames (4, a one-frame chunk at a time) with
    what the model samples from what precedes each, as 8-bit frames encode (generation appends chunks so); a
    rollout finetune trains like any other."""
    settings = small(tmp_path, stage="finetune", steps=3, world="story", recent_frames=1, anchor_noise=0.5,
                     rate="2x2x2", retrieval_mix=0.0, rollout_mix=1.0, history_frames=(12,), chunk_frames=1)
    models = build_models(settings)
    torch.nn.init.normal_(models.dit.head.head.weight, std=0.02)  # a velocity that moves the chunk
    clip = storyworld.make_story_video(storyworld.story_seed(4), 2, "panning").frames[:12]
    history = SpaceToDepthVAE().encode(procedural.to_pixels(clip[None]))
    recycled = recycled_history(models, history, settings, torch.Generator().manual_seed(0), None)
    assert torch.equal(recycled[:, :, :8], history[:, :, :8])
    assert all(not torch.equal(recycled[:, :, t], history[:, :, t]) for t in range(8, 12))
    pixels = SpaceToDepthVAE().decode(recycled[:, :, 8:])
    assert torch.allclose(pixels, ((pixels + 1) * 127.5).round() / 127.5 - 1, atol=1e-5) and not recycled[:, 12:].any()
    losses = train(settings, progress=False)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    with pytest.raises(ValueError, match="^rollout-mix:"):
        small(tmp_path, stage="pretrain", rollout_mix=0.5)


def unroll_settings(tmp_path, **changes) -> TrainSettings:
    return small(tmp_path, **{**dict(stage="finetune", world="story", recent_frames=1, anchor_noise=0.5,
                                     predict_change=True, rate="2x2x2", retrieval_mix=0.0, history_frames=(6,),
                                     chunk_frames=1, unroll=3), **changes})


def story_latents(frames: int) -> torch.Tensor:
    clips = [storyworld.make_story_video(storyworld.story_seed(seed), 2, "panning").frames[:frames] for seed in (4, 5)]
    return SpaceToDepthVAE().encode(procedural.to_pixels(np.stack(clips)))


def test_an_unrolled_step_with_the_zero_head_scores_copying_the_last_frame(tmp_path):
    """The zero head of a change-reading DiT predicts, in one step from full noise, the last frame; unrolled, each
    chunk continues the one before it, so all three predictions are the last real frame and the loss is the
    squared error of copying it forward."""
    settings = unroll_settings(tmp_path)
    models = build_models(settings)
    latents = story_latents(9)
    with torch.no_grad():
        loss = unrolled_loss(models, latents, settings, torch.Generator().manual_seed(0))
    copied = (latents[:, :, 5:6] - latents[:, :, 6:]).pow(2).mean()
    assert loss.item() == pytest.approx(copied.item(), rel=1e-5) and copied > 1e-3


def test_an_unrolled_step_continues_its_own_predictions_with_the_gradient_through_them(tmp_path):
    """Each chunk is predicted from the history plus the chunks predicted before it (not the real ones), and
    the loss's gradient differs from that of the same predictions cut off from the chain."""
    settings = unroll_settings(tmp_path)
    models = build_models(settings)
    torch.nn.init.normal_(models.dit.head.head.weight, std=0.05)  # a head that changes the chunk
    latents, vae = story_latents(9), SpaceToDepthVAE()

    def by_hand(cut: bool) -> torch.Tensor:
        gen, history, losses = torch.Generator().manual_seed(0), latents[:, :, :6], []
        for start in range(6, 9):
            memory = encode_memory(models, history, settings)
            frame_times = torch.arange(start, start + 1).expand(2, -1)
            noise = chunk_noise(latents[:, :, start:start + 1].shape, memory, gen, latents.device)
            velocity = models.dit(noise, torch.full((2,), 1000.0), torch.zeros(2, 1, models.dit.config.text_dim),
                                  memory, frame_times)
            losses.append((noise - velocity - latents[:, :, start:start + 1]).pow(2).mean())
            predicted = vae.encode(vae.decode(noise - velocity))
            history = torch.cat((history, predicted.detach() if cut else predicted), dim=2)
        return torch.stack(losses).mean()

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        models.zero_grad()
        loss.backward()
        return models.dit.head.head.weight.grad.clone()

    unrolled = unrolled_loss(models, latents, settings, torch.Generator().manual_seed(0))
    assert unrolled.item() == pytest.approx(by_hand(cut=False).item(), rel=1e-4)
    through, cut = gradient(unrolled), gradient(by_hand(cut=True))
    assert torch.allclose(through, gradient(by_hand(cut=False)), rtol=1e-3, atol=1e-7)
    assert not torch.allclose(through, cut, rtol=1e-2, atol=1e-6)


def test_an_unrolled_finetune_trains_records_one_step_and_refuses_what_it_cannot_do(tmp_path):
    """It trains the one-step estimate, so its encoder file records one sampling step; a finetune from it without
    the unroll records none again."""
    losses = train(unroll_settings(tmp_path / "u", steps=3), progress=False)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert load_encoder(tmp_path / "u" / "encoder.safetensors").config.sampling_steps == 1
    plain = unroll_settings(tmp_path / "p", steps=1, unroll=0, init_from=tmp_path / "u")
    assert build_models(plain).encoder.config.sampling_steps is None
    with pytest.raises(ValueError, match="^unroll:"):
        unroll_settings(tmp_path, rollout_mix=0.5)
    with pytest.raises(ValueError, match="^unroll:"):
        small(tmp_path, stage="pretrain", unroll=2)


def test_an_unroll_mix_unrolls_that_share_of_steps_and_denoises_one_chunk_in_the_others(tmp_path, monkeypatch):
    """--unroll-mix 0.5: some next-chunk steps predict 3 chunks in a row (clips of history + 3 frames), the others
    denoise one chunk (history + 1); the default unrolls every step."""
    clip_frames = []
    monkeypatch.setattr(loop, "unrolled_loss", lambda models, latents, *rest: record(latents, "unrolled"))
    monkeypatch.setattr(loop, "next_chunk_loss", lambda models, latents, *rest, **kw: record(latents, "one chunk"))

    def record(latents, kind):
        clip_frames.append((kind, latents.shape[2]))
        return latents.sum() * 0

    for mix, steps in ((0.5, 12), (1.0, 4)):
        settings = unroll_settings(tmp_path, unroll_mix=mix)
        models, data = build_models(settings), loop.load_training_data(settings)
        clip_frames.clear()
        for step in range(steps):
            loop.step_loss(models, settings, step, 0, data, False)
        assert set(clip_frames) == ({("unrolled", 9), ("one chunk", 7)} if mix < 1 else {("unrolled", 9)})
    with pytest.raises(ValueError, match="^unroll-mix:"):
        unroll_settings(tmp_path, unroll=0, unroll_mix=0.5)


def test_a_distilled_unroll_regresses_the_teachers_one_step_estimates_of_the_students_chain(tmp_path):
    """--distill-from: a student that is its teacher (same pair, same pattern) has nothing to learn; a clean-context
    student of it is scored against the teacher's estimates of the student's own chain, and trains towards them."""
    teacher_folder = tmp_path / "teacher"
    train(unroll_settings(teacher_folder, steps=3, lr=2e-2), progress=False)  # a head that changes the chunk
    latents, zero = story_latents(9), torch.Generator().manual_seed(0)
    twin_settings = unroll_settings(tmp_path / "twin", init_from=teacher_folder, distill_from=teacher_folder)
    with torch.no_grad():
        assert unrolled_loss(build_models(twin_settings), latents, twin_settings, zero).item() < 1e-12

    settings = unroll_settings(tmp_path / "clean", init_from=teacher_folder, clean_context=True,
                               distill_from=teacher_folder, steps=30, lr=1e-3)
    student, teacher = build_models(settings), build_models(replace(settings, clean_context=False, distill_from=None))
    gen, history, by_hand = torch.Generator().manual_seed(0), latents[:, :, :6], []
    text, full_noise = torch.zeros(2, 1, student.dit.config.text_dim), torch.full((2,), 1000.0)
    with torch.no_grad():
        for start in range(6, 9):
            frame_times = torch.arange(start, start + 1).expand(2, -1)
            memory, teacher_memory = encode_memory(student, history, settings), encode_memory(teacher, history, settings)
            noise = chunk_noise(latents[:, :, start:start + 1].shape, memory, gen, latents.device)
            estimate = noise - student.dit(noise, full_noise, text, memory, frame_times)
            target = noise - teacher.dit(noise, full_noise, text, teacher_memory, frame_times)
            by_hand.append((estimate - target).pow(2).mean())
            history = torch.cat((history, SpaceToDepthVAE().encode(SpaceToDepthVAE().decode(estimate))), dim=2)
        distilled = unrolled_loss(student, latents, settings, torch.Generator().manual_seed(0))
    assert distilled.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-4) and distilled > 1e-6
    losses = train(settings, progress=False)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_a_lora_runs_teacher_is_its_base_with_the_adapter_merged(tmp_path, wan_file):
    """A LoRA training folder holds lora.safetensors naming its base file: the teacher merges the adapter into that
    base, so a whole-DiT student started from the same folder (which merges it too) has nothing to learn. A LoRA
    run cannot be the one that starts reading changes (its zero head would stay zero)."""
    with pytest.raises(ValueError, match="^predict-change: .*LoRA"):
        build_models(unroll_settings(tmp_path / "refused", dit_init=wan_file, lora_rank=4))
    train(unroll_settings(tmp_path / "whole", dit_init=wan_file, lr=2e-2, steps=2), progress=False)
    train(unroll_settings(tmp_path / "teacher", init_from=tmp_path / "whole", lora_rank=4, lr=2e-2, steps=2),
          progress=False)
    settings = unroll_settings(tmp_path / "s", init_from=tmp_path / "teacher", distill_from=tmp_path / "teacher")
    student, base = build_models(settings), build_models(unroll_settings(tmp_path / "b", init_from=tmp_path / "whole"))
    merged = student.teacher.dit.blocks[0].self_attn.q.weight
    assert torch.equal(merged, student.dit.blocks[0].self_attn.q.weight)
    assert not torch.allclose(merged, base.dit.blocks[0].self_attn.q.weight)
    with torch.no_grad():
        assert unrolled_loss(student, story_latents(9), settings, torch.Generator().manual_seed(0)).item() < 1e-12


def test_distill_from_refuses_what_it_cannot_teach_in_one_line(tmp_path):
    train(unroll_settings(tmp_path / "teacher", steps=1), progress=False)
    with pytest.raises(ValueError, match="^distill-from: .*--unroll K"):
        unroll_settings(tmp_path / "s", unroll=0, distill_from=tmp_path / "teacher")
    with pytest.raises(ValueError, match="^distill-from: .* holds no encoder.safetensors"):
        build_models(unroll_settings(tmp_path / "s", distill_from=tmp_path / "s"))
    with pytest.raises(ValueError, match="^distill-from: .*--anchor-noise"):
        build_models(unroll_settings(tmp_path / "s", anchor_noise=0.25, distill_from=tmp_path / "teacher"))


def test_a_change_finetune_starts_from_wans_zero_head_and_records_it(tmp_path):
    """A head that knew velocities of whole chunks starts at zero once it reads changes; the encoder file records
    the reading, and a finetune from that file keeps the head it learnt."""
    start = small(tmp_path / "start", stage="pretrain", steps=1, world="story", rate="2x2x2")
    train(start, progress=False)
    change = dict(stage="finetune", steps=2, world="story", recent_frames=1, rate="2x2x2", retrieval_mix=0.0,
                  predict_change=True, anchor_noise=0.5, chunk_frames=2, change_weighting=True)
    settings = small(tmp_path / "c", init_from=tmp_path / "start", **change)
    assert build_models(settings).dit.head.head.weight.abs().max() == 0
    train(settings, progress=False)
    assert load_encoder(tmp_path / "c" / "encoder.safetensors").config.predict_change
    again = small(tmp_path / "again", init_from=tmp_path / "c", **change)
    assert build_models(again).dit.head.head.weight.abs().max() > 0


def test_predict_change_needs_an_anchored_finetune(tmp_path):
    with pytest.raises(ValueError, match="^predict-change: .* --anchor-noise"):
        small(tmp_path, stage="finetune", recent_frames=1, predict_change=True)
    with pytest.raises(ValueError, match="^change-weighting: .* --predict-change"):
        small(tmp_path, stage="finetune", recent_frames=1, anchor_noise=0.5, change_weighting=True)
    with pytest.raises(ValueError, match="^change-weighting: .* --batch 2"):
        small(tmp_path, stage="finetune", recent_frames=1, anchor_noise=0.5, predict_change=True,
              change_weighting=True, batch=1)


def test_weighted_flow_loss_is_the_weighted_mean_of_the_samples_errors():
    from pfp_core.model.flow import flow_loss

    x0, noise = torch.zeros(2, 16, 1, 4, 4), torch.zeros(2, 16, 1, 4, 4)
    velocity = torch.stack([torch.full((16, 1, 4, 4), 1.0), torch.full((16, 1, 4, 4), 3.0)])
    assert flow_loss(velocity, x0, noise).item() == pytest.approx(5.0)
    assert flow_loss(velocity, x0, noise, torch.tensor([3.0, 1.0])).item() == pytest.approx((3 * 1 + 9) / 4)


def test_context_noise_adds_noise_without_dimming_the_history():
    """A mix (1 - l) x + l eps would darken history toward 0 and teach the model to brighten what it continues."""
    from pfp_core.training.loop import corrupt

    history = torch.full((64, 16, 2, 8, 8), 0.6)
    noisy = corrupt(history, 0.2, torch.Generator().manual_seed(0))
    per_clip_std = (noisy - history).flatten(1).std(dim=1)
    assert abs(noisy.mean().item() - 0.6) < 0.01
    assert per_clip_std.max() < 0.2 and per_clip_std.min() < 0.05 < per_clip_std.max()


def test_scenes_choose_the_story_clips_a_stage_trains_on(tmp_path):
    """--scenes panning draws panning clips only (camera captions, no object events); the default draws both
    scenes; a texture-world run with scenes is refused in one line."""
    captions = lambda settings: {c for row in story_clips(settings, random.Random(0), 16).captions for c in row}
    panning = captions(small(tmp_path, stage="finetune", world="story", batch=8, scenes=("panning",)))
    both = captions(small(tmp_path, stage="finetune", world="story", batch=8))
    assert panning and all(c.startswith("camera ") for c in panning)
    assert any("object" in c for c in both) and any("pans" in c for c in both)
    with pytest.raises(ValueError, match="^scenes: only the procedural story world has scenes"):
        small(tmp_path, stage="finetune", world="texture", scenes=("panning",))


def test_a_scene_named_twice_is_drawn_twice_as_often(tmp_path):
    """The long object stage's 'static static panning': two of three clips static (object captions), the rest
    panning (camera pans), against one of two with the default."""
    def static_share(**scenes) -> float:
        clips = story_clips(small(tmp_path, stage="finetune", world="story", batch=600, **scenes), random.Random(0), 16)
        static = [any("object" in c for c in row) for row in clips.captions]
        assert not any(any("pans" in c for c in row) for row, is_static in zip(clips.captions, static) if is_static)
        return sum(static) / len(static)
    assert abs(static_share(scenes=("static", "static", "panning")) - 2 / 3) < 0.06
    assert abs(static_share() - 1 / 2) < 0.06


def test_a_camera_placed_step_starts_each_chunk_from_the_last_frame_moved_with_its_captions(tmp_path):
    """With --camera-speed the chunks of a pan start from the last frame moved the way their captions pan, so the
    zero head's one-step predictions (that start itself) are closer to the real frames than the last frame left
    where it was; the encoder file records the speed, so generation places the context as training did."""
    videos = [storyworld.make_story_video(storyworld.story_seed(seed), 2, "panning") for seed in (4, 5)]
    latents = SpaceToDepthVAE().encode(procedural.to_pixels(np.stack([v.frames[2:11] for v in videos])))
    text = FrameCaptions([v.captions()[2:11] for v in videos], HashTextEncoder(4096, 32, padding="mean"), 32)
    assert all(caption.startswith("camera pans") for v in videos for caption in v.captions()[8:11])
    losses = {}
    for speed in (1.0, 0.0):
        settings = unroll_settings(tmp_path / str(speed), camera_speed=speed)
        with torch.no_grad():
            losses[speed] = unrolled_loss(build_models(settings), latents, settings, torch.Generator().manual_seed(0),
                                          text).item()
    # what comes into view is wrapped texture, further off than a flat mean would be: 0.60 of the unmoved loss here
    assert losses[1.0] < 0.7 * losses[0.0]
    settings = unroll_settings(tmp_path / "trained", camera_speed=1.0, steps=2)
    train(settings, progress=False)
    assert load_encoder(tmp_path / "trained" / "encoder.safetensors").config.camera_speed == 1.0
    with pytest.raises(ValueError, match="^camera-speed: .*--world story"):
        small(tmp_path, stage="finetune", recent_frames=1, camera_speed=1.0)


def test_an_object_following_step_shifts_the_chunk_as_its_captions_move_objects_and_retrieval_does_not(tmp_path):
    """With --object-speed, a chunk's memory carries the captions' object path (a leave second: one token a frame
    from rest), retrieval redraws past frames without it, and the encoder file records the speed."""
    video = storyworld.make_story_video(storyworld.story_seed(0), 8, "static")  # second 1: an object leaves
    text = FrameCaptions([video.captions()[:16]], HashTextEncoder(4096, 32, padding="mean"), 32)
    settings = unroll_settings(tmp_path / "objects", object_speed=1.0, camera_speed=1.0, chunk_frames=8,
                               history_frames=(8,), unroll=1)
    models = build_models(settings)
    paths = loop.clip_paths(models, text)
    assert paths.objects[0].tolist() == [0.0] * 8 + [-1.0, -2, -3, -4, -5, -6, -7, -8]
    assert paths.camera[0].tolist() == [0.0] * 16  # the static scene's camera holds
    history = SpaceToDepthVAE().encode(procedural.to_pixels(video.frames[None, :8]))
    memory = encode_memory(models, history, settings, paths)
    assert torch.equal(memory.object_path, paths.objects)
    assert loop.placed(memory, paths, 16, chunk=False).object_path is None
    settings = replace(settings, steps=2)
    train(settings, progress=False)
    assert load_encoder(tmp_path / "objects" / "encoder.safetensors").config.object_speed == 1.0
    with pytest.raises(ValueError, match="^object-speed: .*--world story"):
        small(tmp_path, stage="finetune", recent_frames=1, object_speed=1.0)
