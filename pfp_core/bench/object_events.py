"""Teacher-forced object events: does a pair move the objects its captions move, given the real past?

For each held-out static video and each second whose caption makes an object leave or come back, the pair gets
the real frames before that second and the storyboard up to it, and generates the second. Scored on the object's
pixels where it is and where it was one frame before (a pair that leaves the object in place is wrong on both,
one that fades it is half wrong on both), pooled over a kind's events, against holding the last real frame.
eval-continuation's re-entry mixes this with the pair's own drift over a rollout; this asks only whether the
motion was learnt.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..generation.pipeline import Engine
from ..model.objects import caption_object_motion
from ..training import storyworld
from .continuation import ContinuationSettings, continue_video, pooled_psnr

# frames of the second after `given` real frames, from those frames and the storyboard up to that second
GenerateSecond = Callable[[storyworld.StoryVideo, int, str], np.ndarray]
EVENT_KINDS = ("leaves", "comes_back")


def object_events(video: storyworld.StoryVideo) -> list[tuple[int, str]]:
    """(second, kind) of every second after the first whose caption moves an object (read as the engine reads
    it: model.objects), kind one of EVENT_KINDS."""
    events = []
    for second, caption in enumerate(video.events[1:], start=1):
        way, returns = caption_object_motion(caption)
        if way:
            events.append((second, EVENT_KINDS[returns]))
    return events


def event_mask(video: storyworld.StoryVideo, start: int) -> np.ndarray:
    """bool [fps, H, W]: where any object is, or was one frame before, over the second starting at `start`."""
    present = video.object_masks[:, start - 1:start + video.fps].any(axis=0)
    return present[1:] | present[:-1]


def repeat_last_second(video: storyworld.StoryVideo, given: int, storyboard: str) -> np.ndarray:
    return np.repeat(video.frames[given - 1][None], video.fps, axis=0)


def engine_second(engine: Engine, steps: int | None = None) -> GenerateSecond:
    """A pair's second after the real frames, generated as eval-continuation generates (one chunk of a second)."""
    def run(video: storyworld.StoryVideo, given: int, storyboard: str) -> np.ndarray:
        settings = ContinuationSettings(videos=1, given_frames=given, total_frames=given + video.fps, steps=steps)
        return continue_video(engine, video, settings, 0, storyboard)[given:]
    return run


def object_event_figures(generators: dict[str, GenerateSecond], videos: int, seed: int,
                         progress: Callable[[str], None] = lambda text: None) -> dict[str, dict[str, float]]:
    """{kind: {"events": n, name: pooled PSNR, ..., "repeat_last": ...}} over the static videos of seeds
    seed..seed+videos-1 (eval-continuation's held-out videos)."""
    generators = {**generators, "repeat_last": repeat_last_second}
    generated = {kind: {name: [] for name in generators} for kind in EVENT_KINDS}
    real, masks = {kind: [] for kind in generated}, {kind: [] for kind in generated}
    for i in range(videos):
        video = storyworld.make_story_video(storyworld.story_seed(seed + i), 8, "static")
        for second, kind in object_events(video):
            given = second * video.fps
            for name, generate in generators.items():
                generated[kind][name].append(generate(video, given, video.storyboard_until(second)))
            real[kind].append(video.frames[given:given + video.fps])
            masks[kind].append(event_mask(video, given))
        progress(f"object events {i + 1}/{videos}")
    figures = {}
    for kind, rows in generated.items():
        if real[kind]:
            truth, where = np.concatenate(real[kind]), np.concatenate(masks[kind])
            figures[kind] = {"events": len(real[kind]),
                             **{name: pooled_psnr(np.concatenate(frames), truth, where) for name, frames in rows.items()}}
    return figures
