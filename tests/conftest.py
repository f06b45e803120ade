import pytest
import torch

from pfp_core.config import dit_config, encoder_config_for
from pfp_core.dit import WanDiT
from pfp_core.encoder import MemoryEncoder
from pfp_core.pipeline import Engine
from pfp_core.text import HashTextEncoder
from pfp_core.vae import SpaceToDepthVAE


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
