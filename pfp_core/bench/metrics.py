"""Image quality metrics on tensors [..., C, H, W]; one value per image, shaped like the leading dims.

Pixels are in [-1, 1] by default (the engine's convention), hence data_range=2.

PSNR clamps the MSE at 1e-10 so identical images give a large finite value (10*log10(range^2 / 1e-10),
about 106 dB at range 2) instead of +inf, which would poison averages.

SSIM follows Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1=0.01, K2=0.03, 'valid' filtering (no
padding), computed per channel and averaged. For images smaller than 11 px the window shrinks to
min(11, H, W), made odd by subtracting one if needed, keeping sigma 1.5 and renormalising.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_MSE = 1e-10
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR in dB per image, MSE clamped at 1e-10."""
    _check_images(pred, target)
    mse = (_as_float(pred) - _as_float(target)).square().mean(dim=(-3, -2, -1))
    return _psnr_from_mse(mse, data_range)


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR with the MSE taken only over pixels where mask [..., H, W] is True; NaN where a mask is empty."""
    _check_images(pred, target)
    if mask.shape != pred.shape[:-3] + pred.shape[-2:]:
        raise ValueError(f"mask: expected shape {tuple(pred.shape[:-3] + pred.shape[-2:])}, got {tuple(mask.shape)}")
    weights = mask.to(_as_float(pred).dtype)
    squared = (_as_float(pred) - _as_float(target)).square().mean(dim=-3)
    count = weights.sum(dim=(-2, -1))
    mse = (squared * weights).sum(dim=(-2, -1)) / count.clamp(min=1)
    return torch.where(count > 0, _psnr_from_mse(mse, data_range), torch.full_like(mse, float("nan")))


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean SSIM per image, averaged over channels; see the module notes for the window."""
    _check_images(pred, target)
    leading, (channels, height, width) = pred.shape[:-3], pred.shape[-3:]
    x = _as_float(pred).reshape(-1, 1, height, width)
    y = _as_float(target).reshape(-1, 1, height, width)
    window = _gaussian_window(_ssim_window_size(height, width), dtype=x.dtype).to(x.device)
    # One filtering pass over all five local statistics.
    means = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]), window)
    mu_x, mu_y, xx, yy, xy = means.chunk(5)
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(*leading, channels).mean(dim=-1)


def _gaussian_window(size: int, dtype: torch.dtype, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length `size`; its outer product is the 2-D SSIM window."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * sigma**2))
    return (weights / weights.sum()).to(dtype)


def _ssim_window_size(height: int, width: int) -> int:
    size = min(SSIM_WINDOW, height, width)
    return size if size % 2 == 1 else size - 1


def _gaussian_filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of [N, 1, H, W] with the 1-D window along rows, then columns."""
    rows = F.conv2d(images, window.view(1, 1, -1, 1))
    return F.conv2d(rows, window.view(1, 1, 1, -1))


def _psnr_from_mse(mse: torch.Tensor, data_range: float) -> torch.Tensor:
    return 10 * torch.log10(data_range**2 / mse.clamp(min=MIN_MSE))


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images if images.is_floating_point() else images.float()


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() < 3:
        raise ValueError(f"pred: expected [..., C, H, W], got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} differs from pred {tuple(pred.shape)}")
