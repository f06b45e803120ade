"""PeakMemory counts the bytes of storages created inside the block, at their most at once."""
import torch

from pfp_core.bench.peak_memory import PeakMemory


def test_peak_is_the_most_bytes_alive_at_once():
    weights = torch.ones(256)  # created before the block: not counted, nor are its views
    with PeakMemory() as tracker:
        a = torch.empty(1000)  # 4000 bytes
        b = weights * 2  # 1024
        del a
        c = torch.zeros(2000, dtype=torch.bfloat16)  # 4000: 5024 alive
        d = torch.ones(500, dtype=torch.float64)  # 4000 more: 9024 alive, the peak
        view = weights.view(16, 16).t()
        c.add_(1)  # in place: same storage
        row = d[:10]  # a view: same storage
        del b, c, d, row, view
    assert tracker.peak_bytes == 9024
    assert tracker.live_bytes == 0


def test_outputs_alive_after_the_block_stay_counted():
    with PeakMemory() as tracker:
        kept = torch.randn(64, 64)
    assert tracker.peak_bytes == tracker.live_bytes == 64 * 64 * 4
    del kept
    assert tracker.live_bytes == 0
