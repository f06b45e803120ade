"""Object-anchored positions: the storyboard's object motions as rotary positions that move with the object.

In the story world an object that leaves or comes back slides one view width a second, one DiT token a frame at
the shipped size. On screen positions, drawing it asks each frame of a chunk to copy the object from another
column of the context, a shift that changes frame by frame; rotary positions are separable (a score is a time
term plus a column term), so no attention can follow it (the camera had the same problem: pfp_core.model.camera).
With a pair's `object_speed`, half of the width axis's rotary pairs of a
chunk's tokens read the column the moving object had at rest instead of the screen column: `column - shift(t)`,
where the shift is the way the caption moves an object times the frames since it left its rest (a leave starts
from the frame before it) or before it reaches it (a return ends at rest). Context tokens keep shift 0, so the
object's rest place in the history and every frame of the chunk that draws it sit at zero offset on those pairs,
while the other pairs still place the background on the screen. A pair with speed 0 has no shift, and the same
weights then give the same output. The tiny pair trained with it uses it (re-entry falls without it) but still
does not visibly move its objects (README, "The tiny default model").
"""
from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch

# the story world's object vocabulary: the way each caption moves its object, and whether its run ends at rest
OBJECT_WORDS = {"object leaves to the left": (-1, False), "object leaves to the right": (1, False),
                "object comes back from the left": (1, True), "object comes back from the right": (-1, True)}


def caption_object_motion(caption: str) -> tuple[int, bool]:
    """(way, ends at rest): -1, 0 or +1 tokens a frame an object moves under `caption`, and whether it comes back."""
    text = caption.lower()
    return next((motion for words, motion in OBJECT_WORDS.items() if words in text), (0, False))


def object_path(captions: Sequence[str], speed: float) -> torch.Tensor:
    """float [T]: the columns a moving object has travelled from its rest place at each frame (0 where no
    caption moves one). A run of frames under one caption is one motion (so two seconds of the same words in a
    row read as one): a leave moves one step a frame from the frame before the run, a return arrives at rest on
    the run's last frame."""
    shifts: list[float] = []
    for caption, run in groupby(captions):
        frames = len(list(run))
        way, returns = caption_object_motion(caption)
        steps = torch.arange(1, frames + 1, dtype=torch.float32) - (frames if returns else 0)
        shifts += (steps * way * speed).tolist()
    return torch.tensor(shifts, dtype=torch.float32)
