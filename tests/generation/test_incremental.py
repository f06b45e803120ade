import pytest
import torch

from test_generator import full_recompute, make_request, run


def test_incremental_memory_equals_full_recompute_on_a_sliding_window(random_engine):
    torch.manual_seed(4)
    history = torch.randn(1, 16, 41, 16, 16)
    updater = random_engine.memory_updater()
    with torch.no_grad():
        for end in range(1, 42, 3):  # chunks of 3 latent frames, window of 12, partial slabs on the way
            start = max(0, end - 12)
            start -= start % 2
            fast = updater(history[:, :, start:end], start)
            reference = random_engine.encoder.encode(history[:, :, start:end], fps=8)
            assert (fast.tokens - reference.tokens).abs().max() <= 1e-4
            assert torch.equal(fast.positions, reference.positions)
            assert fast.latent_frames == reference.latent_frames and fast.seconds == reference.seconds


def test_update_cost_stays_the_size_of_a_chunk(random_engine):
    updater = random_engine.memory_updater()
    history = torch.randn(1, 16, 200, 16, 16)
    encoded = []
    with torch.no_grad():
        for end in range(8, 201, 8):
            start = max(0, end - 160)
            updater(history[:, :, start:end], start)
            encoded.append(updater.encoded_frames)
    assert encoded[0] == 8 and set(encoded[1:]) == {8}  # never the whole window again
    assert len(updater.memory.complete_slabs) == 80  # slabs that left the window were dropped


def test_generation_with_incremental_memory_equals_the_reference(random_engine, start_image):
    request = make_request(start_image, total=21, chunk=4, window=8)
    fast = run(random_engine, None, request)
    reference = run(random_engine, None, request, compress=full_recompute(random_engine))
    assert fast.memory_tokens == reference.memory_tokens
    assert (fast.latents - reference.latents).abs().max() <= 1e-4


def test_window_must_start_on_a_slab_boundary(random_engine):
    with pytest.raises(ValueError, match="^offset:"):
        random_engine.memory_updater()(torch.zeros(1, 16, 4, 16, 16), 3)
