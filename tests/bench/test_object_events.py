import numpy as np

from pfp_core.bench.continuation import pooled_psnr
from pfp_core.bench.object_events import event_mask, object_event_figures, object_events
from pfp_core.training import storyworld

PERFECT = pooled_psnr(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2), bool))


def truth(video, given, storyboard):
    return video.frames[given:given + video.fps]


def test_events_are_the_seconds_whose_captions_move_an_object():
    video = storyworld.make_story_video(storyworld.story_seed(3), 8, "static")
    events = object_events(video)
    assert events and events[0] == (1, "leaves")  # the story world's second 1 always sends an object away
    assert [second * video.fps for second, kind in events if kind == "comes_back"] == [f for f, _ in video.returns]
    assert video.storyboard_until(2) == " / ".join(video.storyboard.split(" / ")[:3])


def test_the_mask_covers_where_the_object_goes_and_where_it_was():
    video = storyworld.make_story_video(storyworld.story_seed(3), 8, "static")
    second, _ = object_events(video)[0]
    start = second * video.fps
    mask = event_mask(video, start)
    assert mask.shape == (video.fps, *video.frames.shape[1:3])
    before = video.any_object()[start - 1]
    assert (mask[0] >= before).all() and (mask[1] >= video.any_object()[start]).all()


def test_the_truth_scores_perfectly_and_holding_the_last_frame_does_not():
    progress = []
    figures = object_event_figures({"truth": truth}, videos=2, seed=0, progress=progress.append)
    assert len(progress) == 2 and set(figures) <= {"leaves", "comes_back"} and "leaves" in figures
    for kind, row in figures.items():
        assert row["events"] >= 1
        assert row["truth"] == PERFECT and row["repeat_last"] < row["truth"] - 10, kind


def test_a_generator_gets_the_real_frames_before_the_event_and_the_storyboard_through_it():
    seen = []

    def record(video, given, storyboard):
        seen.append((given, storyboard.count(" / ") + 1, video.events[given // video.fps]))
        return video.frames[given - 1:given - 1 + video.fps]

    object_event_figures({"record": record}, videos=1, seed=0)
    assert seen and all(segments == given // 8 + 1 and "object" in event for given, segments, event in seen)
