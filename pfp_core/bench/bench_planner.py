"""Planner bench (`python -m pfp_core bench planner`): the planner's figures against measurement on this machine.

For the tiny config and two small configs shaped like Wan 2.1 1.3B and Wan 2.2 5B (a quarter of their width, the
same FFN ratio and head size, their VAEs' latents), it compares, as measured / planned:
- tokens: the memory tokens the encoder returns plus the chunk's patch tokens;
- FLOPs of the encoder pass and of the DiT forward, counted by FlopCounterMode on the meta device;
- weight bytes of the built modules, fp32 and bf16;
- activation bytes: the peak PeakMemory measures over one encoder pass on the 20 s history and over one DiT
  forward of the chunk with its memory tokens, on CPU, in fp32 and in bf16 (bf16 weights and activations, the
  patch embedding in fp32 as ComfyUI computes it).
Then it lists the planner's ComfyUI settings for 12 GB at 480p: estimates, since no GPU runs here.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..model.attention import matmul_attention, use_attention
from .speed import machine, write_report
from ..config import DiTConfig, EncoderConfig, dit_config, encoder_config_for
from ..model.dit import WanDiT
from ..model.encoder import MemoryEncoder
from .peak_memory import PeakMemory
from ..planner import (activation_bytes, dit_flops, dit_param_count, encoder_activation_bytes, encoder_flops,
                       encoder_param_count, memory_token_count, plan)

BAND = (0.8, 1.25)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FIGURE_SIZE = (1000, 1500)  # height, width of planner.png
STAGES = ("machine", "tiny", "wan2.1-shaped", "wan2.2-shaped", "ComfyUI settings", "report")
COMFY_CASES = (("wan2.1-1.3b", 16), ("wan2.2-5b", 24))  # model, fps; 832x480, 20 s history, 5 s chunk


@dataclass(frozen=True)
class Case:
    name: str
    about: str  # the video the latent shapes stand for
    dit: DiTConfig
    encoder: EncoderConfig
    history: tuple[int, int, int]  # latent frames, height, width
    chunk: tuple[int, int, int]
    fps: int


def small_wan(name: str, ffn_dim: int, channels: int, vae: str, fps: int) -> tuple[DiTConfig, EncoderConfig]:
    dit = DiTConfig(name, dim=384, ffn_dim=ffn_dim, num_heads=3, num_layers=2, in_dim=channels, out_dim=channels,
                    text_len=32, vae=vae, fps=fps)
    return dit, EncoderConfig(dim=384, in_channels=channels, rate="4x4x2", width=64, attn_heads=2, fps=fps)


def bench_cases(quick: bool) -> list[Case]:
    tiny = Case("tiny", "32x32 px at 8 fps: 20 s history, 1 s chunk, rate 2x2x2", dit_config("tiny"),
                encoder_config_for("tiny", "2x2x2"), (161, 16, 16), (9, 16, 16), 8)
    if quick:
        return [tiny]
    wan21 = small_wan("wan2.1-shaped", 2240, 16, "wan2.1", 16)  # 1536 -> 8960 FFN, scaled to 384
    wan22 = small_wan("wan2.2-shaped", 1792, 48, "wan2.2", 24)  # 3072 -> 14336 FFN, scaled to 384
    return [tiny,
            Case("wan2.1-shaped", "416x240 px at 16 fps (Wan 2.1 VAE): 20 s history, 5 s chunk, rate 4x4x2", *wan21,
                 (81, 30, 52), (21, 30, 52), 16),
            Case("wan2.2-shaped", "416x256 px at 24 fps (Wan 2.2 VAE): 20 s history, 5 s chunk, rate 4x4x2", *wan22,
                 (121, 16, 26), (31, 16, 26), 24)]


# ---------------------------------------------------------------------------------------------- planned


def chunk_tokens(case: Case) -> int:
    t, h, w = case.chunk
    return t * (h // case.dit.patch_size[1]) * (w // case.dit.patch_size[2])


def planned(case: Case, dtype_bytes: int) -> dict:
    """The planner's figures for one case, from the functions `plan` is built on."""
    memory, chunk = memory_token_count(case.encoder, case.history), chunk_tokens(case)
    return {"tokens": chunk + memory,
            "dit_flops": dit_flops(case.dit, chunk, memory, case.dit.text_len),
            "encoder_flops": encoder_flops(case.encoder, case.history),
            "weight_bytes": (dit_param_count(case.dit) + encoder_param_count(case.encoder)) * dtype_bytes,
            "dit_activation_bytes": activation_bytes(case.dit, chunk + memory, dtype_bytes),
            "encoder_activation_bytes": encoder_activation_bytes(case.encoder, case.history, dtype_bytes)}


# ---------------------------------------------------------------------------------------------- measured


def inputs(case: Case, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """History latents, chunk latents, text context and the chunk's frame times (right after the history)."""
    channels, start = case.dit.in_dim, case.history[0]
    return (torch.randn(1, channels, *case.history, dtype=dtype), torch.randn(1, channels, *case.chunk, dtype=dtype),
            torch.randn(1, case.dit.text_len, case.dit.text_dim, dtype=dtype),
            torch.arange(start, start + case.chunk[0]))


def passes(dit: WanDiT, encoder: MemoryEncoder, case: Case, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """The two passes the planner models, over inputs made now (outside any measurement): encode the history, and
    run the DiT on the chunk with a memory."""
    history, chunk, context, times = inputs(case, dtype)
    timestep = torch.tensor([500.0], device=chunk.device)
    return (lambda: encoder.encode(history, case.fps)), (lambda memory: dit(chunk, timestep, context, memory, times))


def counted(case: Case) -> dict:
    """Tokens and FLOPs of the real modules, run on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        dit, encoder = WanDiT(case.dit).eval(), MemoryEncoder(case.encoder).eval()
    with torch.no_grad(), use_attention(matmul_attention), torch.device("meta"):
        encode, run_dit = passes(dit, encoder, case, torch.float32)
        with FlopCounterMode(display=False) as encoder_count:
            memory = encode()
        with FlopCounterMode(display=False) as dit_count:
            out = run_dit(memory)
    patches = math.prod(out.shape[2:]) // math.prod(case.dit.patch_size)
    return {"tokens": patches + memory.token_count, "dit_flops": dit_count.get_total_flops(),
            "encoder_flops": encoder_count.get_total_flops()}


def param_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def measured_memory(case: Case, dtype: torch.dtype) -> dict:
    """Weight bytes, and the peak bytes of one encoder pass and one DiT forward beyond weights and inputs."""
    torch.manual_seed(0)
    dit, encoder = WanDiT(case.dit).eval().to(dtype), MemoryEncoder(case.encoder).eval().to(dtype)
    weights = param_bytes(dit, encoder)
    dit.patch_embedding.float()  # the forward feeds it float32 latents; ComfyUI casts its weight the same way
    encode, run_dit = passes(dit, encoder, case, dtype)
    with torch.no_grad():
        with PeakMemory() as encoder_peak:
            memory = encode()
        with PeakMemory() as dit_peak:
            run_dit(memory)
    return {"weight_bytes": weights, "dit_activation_bytes": dit_peak.peak_bytes,
            "encoder_activation_bytes": encoder_peak.peak_bytes}


# ---------------------------------------------------------------------------------------------- run


def comparison(case: str, dtype: str, figure: str, measured: int, planned_value: int) -> dict:
    ratio = measured / planned_value
    return {"case": case, "dtype": dtype, "figure": figure, "measured": measured, "planned": planned_value,
            "ratio": ratio, "met": BAND[0] <= ratio <= BAND[1]}


def compare_case(case: Case) -> list[dict]:
    """Counts once (they do not depend on the dtype), memory in fp32 and in bf16."""
    counts, plan32 = counted(case), planned(case, 4)
    rows = [comparison(case.name, "-", figure, counts[figure], plan32[figure])
            for figure in ("tokens", "dit_flops", "encoder_flops")]
    for name, dtype in DTYPES.items():
        memory, expected = measured_memory(case, dtype), planned(case, dtype.itemsize)
        rows += [comparison(case.name, name, figure, memory[figure], expected[figure]) for figure in memory]
    return rows


def comfy_settings() -> dict:
    """The planner's ComfyUI rows for Wan 2.1 1.3B and Wan 2.2 5B at 832x480, 20 s history, 5 s chunk, CFG."""
    out = {}
    for model, fps in COMFY_CASES:
        figures = plan(model, 832, 480, fps, 20.0)
        out[model] = {key: figures[key] for key in ("fps", "chunk_tokens", "memory_tokens", "activation_gb",
                                                     "comfyui_12gb")}
    return out


def run_planner(out: Path, quick: bool = False, on_stage: Callable[[str], None] = lambda stage: None) -> dict:
    """Measure, compare, write planner.json, planner.md and planner.png into `out`, return the figures."""
    started = time.perf_counter()
    on_stage("machine")
    cases = bench_cases(quick)
    results: dict = {"command": "python -m pfp_core bench planner" + (" --quick" if quick else ""), "quick": quick,
                     "machine": machine(), "band": list(BAND), "cases": {}, "verdicts": []}
    for case in cases:
        on_stage(case.name)
        results["cases"][case.name] = {"about": case.about, "dit": dataclasses.asdict(case.dit),
                                       "encoder": dataclasses.asdict(case.encoder), "history_latents": case.history,
                                       "chunk_latents": case.chunk}
        results["verdicts"] += compare_case(case)
    on_stage("ComfyUI settings")
    results["comfyui_12gb"] = comfy_settings()
    on_stage("report")
    results["bench_seconds"] = time.perf_counter() - started
    write_report(Path(out), "planner", results, format_markdown(results), draw_figure(results))
    return results


# ---------------------------------------------------------------------------------------------- report


FIGURE_NAMES = {"tokens": "tokens (chunk + memory)", "dit_flops": "DiT forward FLOPs",
                "encoder_flops": "encoder FLOPs", "weight_bytes": "weight bytes",
                "dit_activation_bytes": "DiT forward peak activations",
                "encoder_activation_bytes": "encoder peak activations"}


def _amount(figure: str, value: int) -> str:
    if figure.endswith("bytes"):
        return f"{value / 1e6:.2f} MB"
    return f"{value:.4g}" if figure.endswith("flops") else f"{value:,}"


def comfy_table(model: str, figures: dict) -> list[str]:
    lines = [f"**{model}**, 832x480 at {figures['fps']} fps, 5 s chunk ({figures['chunk_tokens']} tokens) + "
             f"{figures['memory_tokens']} memory tokens of a 20 s history, CFG batch 2: DiT step activations "
             f"{figures['activation_gb']} GB.", "",
             "| setting | text encode | memory encode | DiT step | VAE decode | peak | streamed per step | 12 GB | how |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in figures["comfyui_12gb"]:
        p = row["phases_gb"]
        lines.append(f"| {row['setting']} | {p['text_encode']:g} | {p['memory_encode']:g} | {p['dit_step']:g} | "
                     f"{p['vae_decode']:g} | **{row['peak_gb']:g}** | {row['streamed_per_step_gb']:g} | "
                     f"{'fits' if row['fits_12gb'] else '**no**'} | {row['how']} |")
    return lines + [""]


def format_markdown(r: dict) -> str:
    m = r["machine"]
    met = sum(v["met"] for v in r["verdicts"])
    lines = ["# Planner against measurement", "",
             "The planner's (`pfp_core/planner.py`) tokens, FLOPs, weight and activation memory against the same "
             f"figures measured on this machine, as measured / planned; the target band is {BAND[0]}-{BAND[1]}.", "",
             "```", r["command"], "```", "",
             f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']}, no GPU. Whole bench: "
             f"{r['bench_seconds']:.0f} s." + (" **Quick mode: the tiny case only.**" if r["quick"] else ""), "",
             "![measured / planned](planner.png)", "",
             f"**{met} of {len(r['verdicts'])} figures within the band.**", "",
             "How each figure is measured:",
             "- tokens: the memory tokens the encoder returns plus the chunk's patch tokens;",
             "- FLOPs: `FlopCounterMode` over the real modules on the meta device, with attention as explicit "
             "matmuls so that QK^T and AV are counted;",
             "- weight bytes: the parameters of the built DiT and encoder in that dtype;",
             "- peak activations: `pfp_core.bench.peak_memory.PeakMemory`, the most bytes of tensors alive at once that "
             "the pass allocated (beyond its weights and inputs), over one encoder pass on the history and one DiT "
             "forward of the chunk with its memory tokens, batch 1, under `torch.no_grad()`, on CPU with SDPA. "
             "bf16 means bf16 weights and activations, the patch embedding computed in fp32 as ComfyUI does. Kernel "
             "workspaces and allocator rounding are not seen, so a GPU's peak is somewhat higher.", "",
             "The activation model was written from what these measurements show alive at the peak (the FFN or the "
             "RoPE moment of a block), so the agreement says it describes this code in eager PyTorch; it is not an "
             "independent prediction. Inside ComfyUI the same forward runs over ComfyUI's modules (its RMSNorm, "
             "layers that cast their weights), which allocate slightly differently.", ""]
    for name, case in r["cases"].items():
        c = case["dit"]
        lines += [f"## {name}", "",
                  f"{case['about']}. DiT dim {c['dim']}, ffn {c['ffn_dim']}, {c['num_heads']} heads, {c['num_layers']} "
                  f"layers, {c['in_dim']} latent channels; encoder width {case['encoder']['width']}, rate "
                  f"{case['encoder']['rate']}. History latents {tuple(case['history_latents'])}, chunk latents "
                  f"{tuple(case['chunk_latents'])} (frames, height, width).", "",
                  "| figure | dtype | measured | planned | measured / planned |", "| --- | --- | --- | --- | --- |"]
        for v in (v for v in r["verdicts"] if v["case"] == name):
            ratio = f"{v['ratio']:.3f}" if v["met"] else f"**{v['ratio']:.3f}**"
            lines.append(f"| {FIGURE_NAMES[v['figure']]} | {v['dtype']} | {_amount(v['figure'], v['measured'])} | "
                         f"{_amount(v['figure'], v['planned'])} | {ratio} |")
        lines.append("")
    lines += ["## ComfyUI settings for 12 GB (planner estimates, not measured on a GPU)", "",
              "GB = 1e9 bytes needed on the GPU in each phase of a chunk; ComfyUI unloads or partly unloads the other "
              "models between phases, so the peak is the largest phase. The DiT step uses the activation model "
              "checked above, at batch 2 (CFG). Memory encode is the worst case: the whole 20 s history at once "
              "(chunk by chunk, only new slabs are encoded). Text encode is UMT5-XXL's weights. VAE decode is "
              "ComfyUI's own reservation (comfy/sd.py), not a measurement. Streamed per step: DiT weights a 12 GB "
              "card copies from RAM every step. A 12 GiB card has about 0.9 GB more for the CUDA context and "
              "ComfyUI's reserve.", ""]
    for model, figures in r["comfyui_12gb"].items():
        lines += comfy_table(model, figures)
    return "\n".join(lines)


def draw_figure(r: dict) -> np.ndarray:
    """Top: peak activations measured next to planned. Bottom: the planner's ComfyUI peaks against 12 GB."""
    from . import plot

    height, width = FIGURE_SIZE
    img = plot.canvas(height, width)
    peaks = {(v["case"], v["dtype"], v["figure"]): v for v in r["verdicts"] if v["figure"].endswith("activation_bytes")}
    groups = list(dict.fromkeys(key[:2] for key in peaks))
    series = [(f"{part} {kind}", [peaks[(*group, f"{figure}_activation_bytes")][kind] / 1e6 for group in groups])
              for part, figure in (("DiT", "dit"), ("encoder", "encoder")) for kind in ("measured", "planned")]
    plot.bar_chart(img, (10, 10, width - 20, height // 2 - 20), [" ".join(group) for group in groups], series,
                   "Peak activations of one pass on CPU, measured and planned", "MB (log scale)", "{:.3g}", log=True)
    settings = [row["setting"] for row in next(iter(r["comfyui_12gb"].values()))["comfyui_12gb"]]
    plot.bar_chart(img, (10, height // 2 + 10, width - 20, height // 2 - 20), settings,
                   [(model, [row["peak_gb"] for row in figures["comfyui_12gb"]])
                    for model, figures in r["comfyui_12gb"].items()],
                   "ComfyUI peak VRAM of a chunk at 832x480, 20 s history (planner estimate; budget 12 GB)", "GB",
                   "{:.1f}")
    return img
