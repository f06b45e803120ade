"""What `python -m pfp_core export` writes loads in ComfyUI's stock loaders: the LoRA through LoraLoaderModelOnly
patches the tiny Wan DiT with exactly the trained adapter, and the merged DiT through Load Diffusion Model."""
import pytest
import torch
from comfy_env import import_comfy_in_process
from conftest import write_wan_file

from pfp_core.training.distributed import Process
from pfp_core.training.export import DTYPES, export_dit, export_lora
from pfp_core.training.loop import TrainSettings, prepare, run_steps

CPU = Process(rank=0, world=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Wan base file and a LoRA run on it (two steps at a high learning rate, so the adapter is non-zero)."""
    import_comfy_in_process()
    tmp = tmp_path_factory.mktemp("lora")
    base = write_wan_file(tmp / "base.safetensors", prefix="model.diffusion_model.")  # ComfyUI's repackaged layout
    settings = TrainSettings(stage="pretrain", out=tmp / "run", steps=2, batch=1, history_frames=(8,), targets=2,
                             bf16=False, warmup=1, lr=2e-2, dit_init=tmp / "base.safetensors", lora_rank=4,
                             lora_alpha=8.0, device="cpu")
    run = prepare(settings, CPU)
    run_steps(run, settings, CPU, progress=False)
    (tmp / "loras").mkdir()
    export_lora(tmp / "run", tmp / "loras" / "pfp_lora.safetensors", DTYPES["fp32"])
    merged = export_dit(tmp / "run", tmp / "merged.safetensors", DTYPES["fp32"])
    return tmp, base, run.models, merged


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_lora_loader_model_only_applies_the_trained_adapter(trained, strength):
    import comfy.model_management
    import comfy.sd
    import folder_paths

    import nodes

    tmp, base, models, _ = trained
    folder_paths.add_model_folder_path("loras", str(tmp / "loras"))
    model = comfy.sd.load_diffusion_model(str(tmp / "base.safetensors"))
    patched = nodes.LoraLoaderModelOnly().load_lora_model_only(model, "pfp_lora.safetensors", strength)[0]
    assert len(patched.patches) == len(models.lora.names)  # every adapter found its weight
    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    try:
        theirs = {k: v.detach().clone() for k, v in patched.model.diffusion_model.state_dict().items()}
    finally:
        comfy.model_management.unload_all_models()
    base_weights = base.state_dict()
    lora = models.lora  # the adapter as trained, in memory: base + strength * alpha / rank * up @ down
    deltas = {f"{name}.weight": lora.weight_delta(i).detach() for i, name in enumerate(lora.names)}
    for key, weight in base_weights.items():
        expected = weight + strength * deltas[key] if key in deltas else weight
        assert torch.allclose(theirs[key].float(), expected, atol=1e-6), key
    assert all(delta.abs().max() > 0 for delta in deltas.values())


def test_merged_dit_loads_in_load_diffusion_model_and_runs_like_our_lora(trained):
    import comfy.sd

    _, _, models, merged_path = trained
    comfy_model = comfy.sd.load_diffusion_model(str(merged_path))
    net = comfy_model.model.diffusion_model
    assert type(net).__name__ == "WanModel"
    torch.manual_seed(1)
    x, sigma, context = torch.randn(1, 16, 2, 16, 16), torch.tensor([0.6]), torch.randn(1, 8, 4096)
    with torch.no_grad():
        ours = models.dit.eval()(x, sigma * 1000, context)  # base + adapters through hooks
        theirs = net(x, sigma * 1000, context)
    assert (ours - theirs).abs().max() <= 1e-4
