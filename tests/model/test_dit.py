import torch

from pfp_core.model.attention import BACKENDS, attention, use_attention
from pfp_core.model.memory import Memory, latent_to_token_positions
from pfp_core.model.rope import apply_rope, grid_positions, rope_angles


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 128), torch.randn(1, 1, 128)

    def score(pq, pk):
        aq = rope_angles(torch.tensor([pq], dtype=torch.float32), 128)
        ak = rope_angles(torch.tensor([pk], dtype=torch.float32), 128)
        return (apply_rope(q, aq, 1) * apply_rope(k, ak, 1)).sum()

    assert torch.allclose(score([3.0, 1.5, 2.0], [1.0, 0.5, 0.0]), score([5.0, 2.5, 4.0], [3.0, 1.5, 2.0]), atol=1e-4)
    assert not torch.allclose(score([3.0, 1.5, 2.0], [1.0, 0.5, 0.0]), score([3.0, 1.5, 2.0], [2.0, 0.5, 0.0]), atol=1e-3)


def test_grid_positions_follow_frame_times():
    positions = grid_positions(torch.tensor([[4, 9]]), 2, 3)
    assert positions.shape == (1, 12, 3)
    assert positions[0, 0].tolist() == [4, 0, 0] and positions[0, 6].tolist() == [9, 0, 0]
    assert positions[0, 5].tolist() == [4, 1, 2]


def test_memory_token_sits_in_the_middle_of_the_tokens_it_summarises(random_engine):
    memory = random_engine.encoder.encode(torch.zeros(1, 16, 4, 16, 16), fps=8)
    token_positions = latent_to_token_positions(memory.positions, (1, 2, 2))
    # 4x4x2 on an 8x8 token grid: the first memory token covers frames 0-1 and token rows/cols 0-3
    assert token_positions[0].tolist() == [0.5, 1.5, 1.5]
    assert token_positions[-1].tolist() == [2.5, 5.5, 5.5]


def test_memory_changes_the_prediction_and_travels_with_its_positions(random_engine):
    dit = random_engine.dit
    torch.manual_seed(1)
    x, t, context = torch.randn(1, 16, 2, 16, 16), torch.tensor([700.0]), torch.randn(1, 4, 4096)
    memory = random_engine.encoder.encode(torch.randn(1, 16, 6, 16, 16), fps=8)
    with torch.no_grad():
        plain = dit(x, t, context)
        with_memory = dit(x, t, context, memory, torch.tensor([[6, 7]]))
        order = torch.randperm(memory.token_count)
        shuffled = Memory(memory.tokens[:, order], memory.positions[order], memory.latent_frames, memory.seconds)
        with_shuffled = dit(x, t, context, shuffled, torch.tensor([[6, 7]]))
        moved = Memory(memory.tokens, memory.positions[order], memory.latent_frames, memory.seconds)
        with_moved = dit(x, t, context, moved, torch.tensor([[6, 7]]))
    assert (plain - with_memory).abs().max() > 1e-3
    assert torch.allclose(with_memory, with_shuffled, atol=1e-5)  # a token's meaning is (content, position)
    assert (with_moved - with_memory).abs().max() > 1e-4


def test_batched_frame_times_match_single_samples(random_engine):
    dit = random_engine.dit
    torch.manual_seed(2)
    x, t, context = torch.randn(2, 16, 2, 16, 16), torch.tensor([300.0, 800.0]), torch.randn(2, 4, 4096)
    times = torch.tensor([[1, 5], [3, 4]])
    with torch.no_grad():
        both = dit(x, t, context, None, times)
        first = dit(x[:1], t[:1], context[:1], None, times[:1])
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_attention_backends_agree_and_switch_point_routes():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 5, 64), torch.randn(2, 7, 64), torch.randn(2, 7, 64)
    reference = torch.softmax(
        q.view(2, 5, 4, 16).transpose(1, 2) @ k.view(2, 7, 4, 16).transpose(1, 2).transpose(-1, -2) / 4, -1
    ) @ v.view(2, 7, 4, 16).transpose(1, 2)
    for name in ("sdpa", "matmul"):
        assert torch.allclose(BACKENDS[name](q, k, v, 4), reference.transpose(1, 2).reshape(2, 5, 64), atol=1e-5)
    calls = []
    with use_attention(lambda *a: calls.append(1) or BACKENDS["sdpa"](*a)):
        attention(q, k, v, 4)
    assert calls == [1]
