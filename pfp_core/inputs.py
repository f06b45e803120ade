"""Checks on values that arrive from workflows and the API, where ComfyUI's own checks stop: names become paths
only inside the folder they belong to, and numbers and tensors must be finite (NaN passes every min/max check,
because every comparison with NaN is false)."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def inside(folder: str | Path, name: str, field: str) -> Path:
    """`folder / name` with every link resolved, or a one-line ValueError naming `field` if it leaves `folder`:
    no '..', no absolute path, no symlink that leads out."""
    root = Path(folder).resolve()
    path = (root / name).resolve()  # an absolute `name` replaces root here, so it is caught below
    if not name.strip() or root not in path.parents:
        where = f"{root.parent.name}/{root.name}/"
        raise ValueError(f"{field}: '{name}' must be a name inside {where}, without '..', a leading '/' or a link "
                         "that leads out of it; pick a plain name")
    return path


def finite(**values: float | torch.Tensor) -> None:
    """A one-line ValueError naming the first value (a number or every element of a tensor) that is NaN or inf."""
    for field, value in values.items():
        ok = bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else math.isfinite(value)
        if not ok:
            raise ValueError(f"{field}: contains NaN or infinity; give finite values (check the node or number "
                             "that made it)")
