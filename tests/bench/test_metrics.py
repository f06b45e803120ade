import math

import numpy as np
import pytest
import torch

from pfp_core.bench.metrics import masked_psnr, psnr, ssim


def smooth_images(*leading: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1] with structure at several scales, shape [*leading, 3, size, size]."""
    generator = torch.Generator().manual_seed(seed)
    cells = -(-size // 4)
    coarse = torch.rand(*leading, 3, cells, cells, generator=generator)
    upsampled = coarse.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)[..., :size, :size]
    fine = torch.rand(*leading, 3, size, size, generator=generator)
    return (0.7 * upsampled + 0.3 * fine) * 2 - 1


def numpy_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Straightforward SSIM of one [C, H, W] image pair: explicit 2-D Gaussian window, valid positions only."""
    height, width = a.shape[1:]
    size = min(11, height, width)
    size -= 1 - size % 2
    offsets = np.arange(size) - (size - 1) / 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        values = []
        for i in range(height - size + 1):
            for j in range(width - size + 1):
                px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
                mx, my = (window * px).sum(), (window * py).sum()
                vx = (window * (px - mx) ** 2).sum()
                vy = (window * (py - my) ** 2).sum()
                cov = (window * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def test_identical_images():
    images = smooth_images(2)
    assert torch.allclose(ssim(images, images), torch.ones(2))
    assert torch.allclose(psnr(images, images), torch.full((2,), 10 * math.log10(4 / 1e-10)))


def test_constant_error_gives_exact_psnr():
    target = smooth_images(4) * 0.5
    assert torch.allclose(psnr(target + 0.1, target), torch.full((4,), 10 * math.log10(4 / 0.01)), atol=1e-4)


def test_leading_dims_are_kept():
    images = smooth_images(2, 5, size=16)
    noisy = images + 0.1
    assert psnr(noisy, images).shape == (2, 5)
    assert ssim(noisy, images).shape == (2, 5)
    assert ssim(noisy[0, 0], images[0, 0]).shape == ()


def test_ssim_is_symmetric():
    a, b = smooth_images(3, seed=1), smooth_images(3, seed=2)
    torch.testing.assert_close(ssim(a, b), ssim(b, a))


def test_ssim_drops_monotonically_with_noise():
    images = smooth_images(1)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    scores = [ssim(images + level * noise, images).item() for level in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)]
    assert all(later < earlier for earlier, later in zip(scores, scores[1:]))


def test_ssim_penalises_a_brightness_shift():
    images = smooth_images(1) * 0.5
    assert ssim(images + 0.3, images).item() < 0.99


@pytest.mark.parametrize("size", [32, 10, 9])
def test_ssim_agrees_with_a_numpy_reference(size):
    a, b = smooth_images(size=size, seed=4), smooth_images(size=size, seed=5)
    b = 0.6 * a + 0.4 * b  # correlated, so SSIM is neither ~0 nor ~1
    assert ssim(a, b).item() == pytest.approx(numpy_ssim(a.numpy(), b.numpy()), abs=1e-5)


def test_ssim_reference_at_another_data_range():
    a, b = (smooth_images(size=16, seed=6) + 1) * 127.5, (smooth_images(size=16, seed=7) + 1) * 127.5
    assert ssim(a, b, data_range=255.0).item() == pytest.approx(numpy_ssim(a.numpy(), b.numpy(), 255.0), abs=1e-5)


def test_masked_psnr_with_full_mask_equals_psnr():
    a, b = smooth_images(2, 3, seed=8), smooth_images(2, 3, seed=9)
    mask = torch.ones(2, 3, 32, 32, dtype=torch.bool)
    torch.testing.assert_close(masked_psnr(a, b, mask), psnr(a, b))


def test_masked_psnr_ignores_pixels_outside_the_mask():
    target = smooth_images(seed=10) * 0.5
    pred = target.clone()
    pred[:, :16] += 0.1
    pred[:, 16:] += 0.9  # outside the mask: must not count
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:16] = True
    assert masked_psnr(pred, target, mask).item() == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-4)


def test_masked_psnr_is_nan_for_an_empty_mask():
    images = smooth_images(2)
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[0, 0, 0] = True
    values = masked_psnr(images + 0.1, images, mask)
    assert not torch.isnan(values[0]) and torch.isnan(values[1])


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="target"):
        psnr(smooth_images(1), smooth_images(2))
    with pytest.raises(ValueError, match="mask"):
        masked_psnr(smooth_images(1), smooth_images(1), torch.ones(32, 32, dtype=torch.bool))
