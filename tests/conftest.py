import pytest
import torch

from pfp_core.config import dit_config, encoder_config_for
from pfp_core.model.dit import WanDiT
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.generation.pipeline import Engine
from pfp_core.model.text import HashTextEncoder
from pfp_core.model.vae import SpaceToDepthVAE


@pytest.fixture
def random_engine() -> Engine:
    """Untrained tiny models with a non-zero head, so outputs depend on every input."""
    torch.manual_seed(0)
    dit = WanDiT(dit_config("tiny")).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.02)
    encoder = MemoryEncoder(encoder_config_for("tiny")).eval()
    return Engine(dit, encoder, SpaceToDepthVAE(), HashTextEncoder(4096, 32))


@pytest.fixture
def start_image() -> torch.Tensor:
    """A random 32x32 start frame [1, 3, 1, H, W] in [-1, 1]."""
    torch.manual_seed(0)
    return torch.rand(1, 3, 1, 32, 32) * 2 - 1


def write_wan_file(path, prefix: str = "", dtype: torch.dtype = torch.float32, seed: int = 0) -> WanDiT:
    """A tiny Wan DiT saved as Wan or ComfyUI does: no PFP metadata, keys under `prefix`. Non-zero head and biases
    (Wan's init zeroes them), so every layer receives gradients as in a trained model. Returns the fp32 model."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    dit = WanDiT(dit_config("tiny"))
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)
    for name, parameter in dit.named_parameters():
        if name.endswith(".bias"):
            torch.nn.init.normal_(parameter, std=0.02)
    save_file({prefix + k: v.to(dtype).contiguous() for k, v in dit.state_dict().items()}, str(path))
    return dit


@pytest.fixture
def wan_file(tmp_path):
    """Path of a tiny Wan DiT in ComfyUI's repackaged layout (`model.diffusion_model.` prefix, bf16)."""
    path = tmp_path / "wan_tiny.safetensors"
    write_wan_file(path, prefix="model.diffusion_model.", dtype=torch.bfloat16)
    return path
