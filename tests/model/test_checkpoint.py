import pickle

import pytest
import torch
from safetensors.torch import save_file

from pfp_core.model.checkpoint import (CheckpointError, check_compatible, load_dit, load_encoder, read_safetensors,
                                       save_model)
from pfp_core.config import dit_config, encoder_config_for
from pfp_core.model.encoder import MemoryEncoder


def test_round_trip_keeps_weights_and_config(tmp_path, random_engine):
    save_model(random_engine.dit, random_engine.dit.config, tmp_path / "dit.safetensors", "dit")
    save_model(random_engine.encoder, random_engine.encoder.config, tmp_path / "enc.safetensors", "memory_encoder")
    dit, encoder = load_dit(tmp_path / "dit.safetensors"), load_encoder(tmp_path / "enc.safetensors")
    assert dit.config == random_engine.dit.config and encoder.config == random_engine.encoder.config
    for a, b in zip(dit.state_dict().values(), random_engine.dit.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_wan_file_without_metadata_and_with_comfy_prefix_loads(tmp_path, random_engine):
    tensors = {f"model.diffusion_model.{k}": v for k, v in random_engine.dit.state_dict().items()}
    save_file(tensors, str(tmp_path / "wan.safetensors"))
    dit = load_dit(tmp_path / "wan.safetensors")
    assert (dit.config.dim, dit.config.num_heads, dit.config.num_layers, dit.config.in_dim) == (128, 1, 4, 16)
    assert torch.equal(dit.head.head.weight, random_engine.dit.head.head.weight)


def test_width_mismatch_is_one_clear_line():
    encoder = encoder_config_for("wan2.1-1.3b")
    with pytest.raises(CheckpointError) as error:
        check_compatible(encoder, dit_config("wan2.2-5b"))
    message = str(error.value)
    assert "\n" not in message and "encoder width 1536 != DiT width 3072" in message
    assert "latent channels 16 != DiT latent channels 48" in message


def test_pickle_renamed_safetensors_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle.*not safetensors"):
        load_encoder(path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "zip.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_dit(tmp_path / "zip.safetensors")


def test_safetensors_whose_header_length_starts_with_the_pickle_byte_loads(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 must not read as a pickle."""
    for padding in range(256):
        path = tmp_path / "t.safetensors"
        save_file({"w": torch.arange(3.0)}, str(path), metadata={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    tensors, metadata = read_safetensors(path, "encoder")
    assert torch.equal(tensors["w"], torch.arange(3.0)) and metadata["pad"].startswith("x")
    path.write_bytes(path.read_bytes()[:40])  # cut inside its header: truncated, still not a pickle
    with pytest.raises(CheckpointError, match="^encoder: t.safetensors is not a readable safetensors"):
        read_safetensors(path, "encoder")


def test_truncated_and_foreign_files_are_named(tmp_path, random_engine):
    good = save_model(random_engine.encoder, random_engine.encoder.config, tmp_path / "enc.safetensors", "memory_encoder")
    truncated = tmp_path / "short.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="^encoder: short.safetensors is not a readable safetensors"):
        load_encoder(truncated)
    save_model(random_engine.dit, random_engine.dit.config, tmp_path / "dit.safetensors", "dit")
    with pytest.raises(CheckpointError, match="^encoder: dit.safetensors is not a PFP memory encoder"):
        load_encoder(tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match="^dit: file not found"):
        load_dit(tmp_path / "missing.safetensors")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    encoder = MemoryEncoder(encoder_config_for("tiny"))
    other = MemoryEncoder(encoder_config_for("tiny", rate="2x2x1"))
    save_model(other, encoder.config, tmp_path / "enc.safetensors", "memory_encoder")  # config says 4x4x2
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_encoder(tmp_path / "enc.safetensors")


def test_tiny_config_is_detectable_by_comfyui_and_real_sizes_are_wan():
    assert dit_config("tiny").comfy_detectable()
    for name in ("wan2.1-1.3b", "wan2.1-14b", "wan2.2-5b"):
        assert dit_config(name).comfy_detectable()


def test_memory_round_trips_through_a_file_and_foreign_files_are_named(tmp_path, random_engine):
    from pfp_core.model.memory import load_memory, save_memory

    memory = random_engine.encoder.encode(torch.randn(1, 16, 6, 16, 16), fps=8)
    loaded = load_memory(save_memory(memory, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.tokens, memory.tokens) and torch.equal(loaded.positions, memory.positions)
    assert (loaded.latent_frames, loaded.seconds) == (6, 0.75)
    save_model(random_engine.dit, random_engine.dit.config, tmp_path / "dit.safetensors", "dit")
    with pytest.raises(CheckpointError, match="^memory: dit.safetensors is not a saved PFP memory"):
        load_memory(tmp_path / "dit.safetensors")


@pytest.mark.parametrize("metadata, tokens", [({"latent_frames": "6"}, (1, 4, 8)), ({"latent_frames": "x", "seconds": "1"},
                                              (1, 4, 8)), ({"latent_frames": "6", "seconds": "nan"}, (1, 4, 8)),
                                              ({"latent_frames": "6", "seconds": "1"}, (4, 8))])
def test_a_memory_file_with_broken_metadata_or_shapes_is_refused_in_one_line(metadata, tokens, tmp_path):
    from pfp_core.model.memory import load_memory

    save_file({"tokens": torch.zeros(tokens), "positions": torch.zeros(4, 3)}, str(tmp_path / "m.safetensors"),
              {"pfp_kind": "memory", **metadata})
    with pytest.raises(CheckpointError, match=r"^memory: m.safetensors is damaged \(tokens"):
        load_memory(tmp_path / "m.safetensors")


@pytest.mark.parametrize("name", ["tiny", "wan2.1-1.3b", "wan2.1-14b", "wan2.2-5b"])
def test_a_known_size_without_metadata_is_recognised_by_its_shapes(name):
    from pfp_core.model.checkpoint import infer_dit_config
    from pfp_core.model.dit import WanDiT

    with torch.device("meta"):
        state = WanDiT(dit_config(name)).state_dict()
    assert infer_dit_config(state, "some_file") == dit_config(name)  # name, fps and text length come along


def test_read_dit_config_reads_a_comfy_layout_header(tmp_path, random_engine):
    from pfp_core.model.checkpoint import read_dit_config

    tensors = {f"model.diffusion_model.{k}": v for k, v in random_engine.dit.state_dict().items()}
    save_file(tensors, str(tmp_path / "wan.safetensors"))
    assert read_dit_config(tmp_path / "wan.safetensors") == dit_config("tiny")
