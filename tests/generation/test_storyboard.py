"""Behaviour of pfp_core.generation.storyboard: parsing, errors, chunk planning and the plan outputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pfp_core.generation.storyboard import (ChunkPrompt, Segment, Storyboard, StoryboardError, format_plan,
                                            parse_storyboard, plan_chunks, plan_to_json, resolve_camera_returns,
                                            validate_duration)

EXAMPLE = "0s: woman stands by shelf\n12s: woman pets cat\n[20s-25s: woman sits down]\n"


def prompts(chunks: list[ChunkPrompt]) -> list[str]:
    return [c.prompt for c in chunks]


def error_of(text: str, global_prompt: str = "") -> str:
    with pytest.raises(StoryboardError) as info:
        parse_storyboard(text, global_prompt)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# --- accepted syntax ---------------------------------------------------------------------------------------

def test_parses_example_points_and_range() -> None:
    sb = parse_storyboard(EXAMPLE)
    assert sb == Storyboard(
        segments=(
            Segment(0.0, None, "woman stands by shelf", 1),
            Segment(12.0, None, "woman pets cat", 2),
            Segment(20.0, 25.0, "woman sits down", 3),
        ),
        global_prompt="",
    )


def test_fractional_seconds() -> None:
    assert parse_storyboard("2.5s: cat yawns").segments == (Segment(2.5, None, "cat yawns", 1),)


def test_minutes_seconds_times() -> None:
    sb = parse_storyboard("0:00: opening\n1:05: door opens\n[1:10-1:30.5: rain]")
    assert [(s.start, s.end) for s in sb.segments] == [(0.0, None), (65.0, None), (70.0, 90.5)]
    assert sb.segments[1].prompt == "door opens"


def test_range_with_prompt_outside_brackets() -> None:
    assert parse_storyboard("[3s-7s]: woman sits").segments == (Segment(3.0, 7.0, "woman sits", 1),)


def test_spacing_and_case_are_tolerated() -> None:
    sb = parse_storyboard("  0S :   a  \n[ 4s - 6s :  b ]")
    assert sb.segments == (Segment(0.0, None, "a", 1), Segment(4.0, 6.0, "b", 2))


def test_one_line_slash_form() -> None:
    sb = parse_storyboard("0s: woman stands by shelf / 12s: woman pets cat / [20s-25s]: woman sits")
    assert [(s.start, s.end, s.prompt, s.line) for s in sb.segments] == [
        (0.0, None, "woman stands by shelf", 1),
        (12.0, None, "woman pets cat", 1),
        (20.0, 25.0, "woman sits", 1),
    ]


def test_slash_inside_a_prompt_is_kept() -> None:
    assert parse_storyboard("0s: black / white cat / 4s: dog").segments[0].prompt == "black / white cat"


def test_blank_lines_and_comments_are_ignored_but_counted() -> None:
    sb = parse_storyboard("# scene one\n\n0s: a\n   # 5s: not a segment\n\n9s: b")
    assert [(s.prompt, s.line) for s in sb.segments] == [("a", 3), ("b", 6)]


def test_global_lines_set_and_extend_global_prompt() -> None:
    sb = parse_storyboard("global: cinematic\n0s: a\n*: 35mm film / 4s: b\nGLOBAL: soft light", "masterpiece")
    assert sb.global_prompt == "masterpiece, cinematic, 35mm film, soft light"
    assert [s.prompt for s in sb.segments] == ["a", "b"]


def test_global_prompt_argument_whitespace_is_collapsed() -> None:
    assert parse_storyboard("0s: a", "cinematic,\n  warm light ").global_prompt == "cinematic, warm light"


def test_plain_prompt_without_timestamps_is_one_segment() -> None:
    sb = parse_storyboard("\n# note\na woman stands by a shelf\nholding a cup")
    assert sb.segments == (Segment(0.0, None, "a woman stands by a shelf holding a cup", 3),)


def test_empty_storyboard_with_global_prompt_uses_global_alone() -> None:
    sb = parse_storyboard("# nothing yet\n\n", "a cat in a garden")
    assert sb.segments == (Segment(0.0, None, "", 0),)
    chunks = plan_chunks(sb, 3, 1)
    assert prompts(chunks) == ["a cat in a garden"] * 3
    assert [c.segment_line for c in chunks] == [None] * 3


def test_global_line_alone_is_valid() -> None:
    assert parse_storyboard("global: a cat").global_prompt == "a cat"


# --- parse errors ------------------------------------------------------------------------------------------

def test_times_must_increase() -> None:
    message = error_of("0s: a\n12s: woman pets cat\n5s: cat sleeps")
    assert message == ("storyboard line 3 ('5s: cat sleeps'): starts at 5s, before line 2 (12s); "
                       "times must increase")


def test_equal_times_are_rejected() -> None:
    message = error_of("0s: a / 0s: b")
    assert message.startswith("storyboard line 1 ('0s: b'): starts at 0s, at the same time as line 1")


def test_overlapping_range_is_rejected() -> None:
    message = error_of("0s: a\n[20s-25s: sits]\n22s: stands")
    assert message.startswith("storyboard line 3 ('22s: stands'): starts at 22s, inside the range on line 2")
    assert "25s or later" in message


def test_range_ending_exactly_at_next_start_is_fine() -> None:
    assert len(parse_storyboard("[0s-5s: a]\n5s: b").segments) == 2


@pytest.mark.parametrize("text", ["[5s-3s: a]", "[5s-5s: a]"])
def test_range_end_must_be_after_start(text: str) -> None:
    message = error_of(f"0s: x\n{text}")
    assert message.startswith(f"storyboard line 2 ('{text}'): range ends at")
    assert "later than the start" in message


@pytest.mark.parametrize("text", ["-2s: a", "[-1s-3s: a]", "[1s--3s: a]", "-0:05: a"])
def test_negative_times_are_rejected(text: str) -> None:
    message = error_of(f"# c\n{text}")
    assert message.startswith(f"storyboard line 2 ('{text}'): time -")
    assert "negative" in message


def test_absurdly_large_time_is_rejected_not_crashing() -> None:
    assert "line 1" in error_of("9" * 400 + ":00: a")


@pytest.mark.parametrize("text", ["12s:", "12s:   ", "[2s-4s]", "[2s-4s: ]", "[2s-4s]:"])
def test_empty_prompt_is_rejected(text: str) -> None:
    message = error_of(f"0s: a\n{text}")
    assert message.startswith("storyboard line 2 (")
    assert "has no prompt" in message


def test_empty_global_line_is_rejected() -> None:
    assert error_of("0s: a\nglobal:").startswith("storyboard line 2 ('global:'): global prompt is empty")


def test_untimed_line_among_timed_ones_is_rejected() -> None:
    message = error_of("0s: a\n\nthe cat walks away\n9s: b")
    assert message.startswith("storyboard line 3 ('the cat walks away'): has no timestamp")


def test_time_without_s_suffix_is_not_a_timestamp() -> None:
    assert error_of("0s: a\n12: b").startswith("storyboard line 2 ('12: b'): does not start with a time")


def test_empty_storyboard_is_rejected() -> None:
    expected = "storyboard: empty; write at least one line such as '0s: a woman stands by a shelf'"
    assert error_of("") == expected
    assert error_of("\n  \n# only a comment\n") == expected


def test_huge_text_is_rejected() -> None:
    message = error_of("0s: " + "a" * 100_000)
    assert message.startswith("storyboard: 100,004 characters is too long (limit 100,000)")
    assert error_of("0s: a", "b" * 100_001).startswith("global prompt: 100,001 characters is too long")


def test_text_at_the_limit_is_accepted() -> None:
    assert len(parse_storyboard("0s: " + "a" * 99_996).segments[0].prompt) == 99_996


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(StoryboardError, match="^storyboard: expected text, got int$"):
        parse_storyboard(12)  # type: ignore[arg-type]
    with pytest.raises(StoryboardError, match="^global prompt: expected text, got NoneType$"):
        parse_storyboard("0s: a", None)  # type: ignore[arg-type]


def test_nul_character_is_rejected_with_its_line() -> None:
    assert error_of("0s: a\n4s: b\x00c") == "storyboard line 2 ('4s: b\\0c'): contains a NUL character; remove it"
    assert error_of("0s: a", "x\x00") == "global prompt: contains a NUL character; remove it"


def test_long_lines_are_truncated_in_errors() -> None:
    message = error_of("0s: a\n" + "x" * 500)
    assert "x" * 59 + "…'" in message and "x" * 60 not in message


def test_storyboard_error_is_a_value_error() -> None:
    assert issubclass(StoryboardError, ValueError)


# --- duration ----------------------------------------------------------------------------------------------

def test_validate_duration_rejects_start_at_or_after_end() -> None:
    sb = parse_storyboard("0s: a\n\n60s: the end")
    validate_duration(sb, 60.5)
    with pytest.raises(StoryboardError) as info:
        validate_duration(sb, 60)
    assert str(info.value) == ("storyboard line 3 ('60s: the end'): starts at 60s, but the video is only 60s long; "
                               "lengthen the video or move the line earlier")


def test_range_may_run_past_the_end() -> None:
    chunks = plan_chunks(parse_storyboard("[0s-50s: a]"), 4, 1)
    assert prompts(chunks) == ["a"] * 4


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, True, "10"])
def test_non_positive_or_non_finite_seconds_are_rejected(bad: object) -> None:
    sb = parse_storyboard("0s: a")
    with pytest.raises(StoryboardError, match="^seconds: must be a positive finite number"):
        plan_chunks(sb, bad, 1)  # type: ignore[arg-type]
    with pytest.raises(StoryboardError, match="^chunk_seconds: must be a positive finite number"):
        plan_chunks(sb, 10, bad)  # type: ignore[arg-type]


def test_numpy_numbers_are_accepted() -> None:
    assert len(plan_chunks(parse_storyboard("0s: a"), np.float32(4.0), np.int64(2))) == 2


# --- planning ----------------------------------------------------------------------------------------------

def test_chunk_count_and_last_end_for_non_multiple_length() -> None:
    chunks = plan_chunks(parse_storyboard("0s: a"), 7, 2)
    assert [(c.index, c.start, c.end) for c in chunks] == [(0, 0, 2), (1, 2, 4), (2, 4, 6), (3, 6, 7)]


def test_exact_multiple_has_no_extra_chunk() -> None:
    chunks = plan_chunks(parse_storyboard("0s: a"), 10, 1)
    assert len(chunks) == 10 and chunks[-1].end == 10
    assert len(plan_chunks(parse_storyboard("0s: a"), 4.9, 0.7)) == 7  # 4.9 / 0.7 is 7.000000000000001


def test_video_shorter_than_one_chunk_gives_one_short_chunk() -> None:
    chunks = plan_chunks(parse_storyboard("0s: a"), 0.5, 5)
    assert [(c.start, c.end) for c in chunks] == [(0, 0.5)]


def test_example_with_one_second_chunks() -> None:
    chunks = plan_chunks(parse_storyboard(EXAMPLE), 30, 1)
    expected = (["woman stands by shelf"] * 12 + ["woman pets cat"] * 8 + ["woman sits down"] * 5
                + ["woman sits down"] * 5)  # no global prompt: the range's prompt carries on
    assert prompts(chunks) == expected
    assert [c.segment_line for c in chunks] == [1] * 12 + [2] * 8 + [3] * 10


def test_camera_returns_are_resolved_from_the_storyboards_own_pans() -> None:
    text = ("0s: camera pans right / 2s: camera comes back / 3s: camera comes back, red ball rolls"
            " / 5s: camera pans left / 6s: camera comes back / 7s: red object comes back from the left")
    assert prompts(plan_chunks(parse_storyboard(text), 8, 1)) == [
        "camera pans right", "camera pans right", "camera comes back left", "camera comes back left, red ball rolls",
        "camera comes back, red ball rolls",  # back at the start: no way to go, the words stay as written
        "camera pans left", "camera comes back right", "red object comes back from the left"]


def test_a_written_way_back_is_kept_and_counted() -> None:
    written = ["camera pans right", "camera comes back left", "camera comes back", "camera comes back"]
    resolved = resolve_camera_returns(written, [2, 1, 1, 1])
    assert resolved == [*written[:2], "camera comes back left", "camera comes back"]


@pytest.mark.parametrize(("start", "chunk"), [(12, 2), (13, 3), (12.5, 3), (10, 2)])
def test_snapping_to_nearest_boundary(start: float, chunk: int) -> None:
    # 5s chunks at 0,5,10,15: 12s -> 10s, 13s -> 15s, 12.5s ties -> 15s (later), 10s stays.
    chunks = plan_chunks(parse_storyboard(f"0s: a\n{start}s: b"), 20, 5)
    assert prompts(chunks) == ["a"] * chunk + ["b"] * (4 - chunk)


def test_chunks_before_first_segment_take_first_segment() -> None:
    chunks = plan_chunks(parse_storyboard("8s: late start\n14s: b"), 16, 4)
    assert prompts(chunks) == ["late start", "late start", "late start", "b"]
    assert chunks[0].segment_line == 1


def test_global_prompt_is_prefixed_to_every_chunk() -> None:
    chunks = plan_chunks(parse_storyboard("global: cinematic\n0s: a / 4s: b"), 8, 2)
    assert prompts(chunks) == ["cinematic, a", "cinematic, a", "cinematic, b", "cinematic, b"]
    assert [c.segment_line for c in chunks] == [2, 2, 2, 2]


def test_after_a_range_chunks_take_global_prompt_alone_until_next_segment() -> None:
    sb = parse_storyboard("[0s-2s: a]\n5s: b", "style")
    chunks = plan_chunks(sb, 7, 1)
    assert prompts(chunks) == ["style, a"] * 2 + ["style"] * 3 + ["style, b"] * 2
    assert [c.segment_line for c in chunks] == [1, 1, None, None, None, 2, 2]


def test_range_end_is_snapped() -> None:
    # Range 0-6s with 5s chunks: end snaps to 5s, so chunk 1 (5-10s) is already after the range.
    chunks = plan_chunks(parse_storyboard("[0s-6s: a]", "g"), 15, 5)
    assert prompts(chunks) == ["g, a", "g", "g"]
    chunks = plan_chunks(parse_storyboard("[0s-8s: a]", "g"), 15, 5)
    assert prompts(chunks) == ["g, a", "g, a", "g"]


def test_short_range_keeps_at_least_one_chunk() -> None:
    chunks = plan_chunks(parse_storyboard("0s: a\n[10s-11s: blink]", "g"), 20, 5)
    assert prompts(chunks) == ["g, a", "g, a", "g, blink", "g"]


def test_start_snapping_to_video_end_is_pulled_back_to_last_chunk() -> None:
    chunks = plan_chunks(parse_storyboard("0s: a\n8s: finale"), 10, 5)
    assert prompts(chunks) == ["a", "finale"]


def test_later_segment_wins_when_two_snap_to_same_chunk() -> None:
    chunks = plan_chunks(parse_storyboard("0s: a\n11s: b\n12s: c"), 20, 5)
    assert prompts(chunks) == ["a", "a", "c", "c"]


def test_plan_calls_validate_duration() -> None:
    with pytest.raises(StoryboardError, match=r"^storyboard line 2 \('30s: b'\): starts at 30s, but the video is"):
        plan_chunks(parse_storyboard("0s: a\n30s: b"), 20, 5)


# --- outputs -----------------------------------------------------------------------------------------------

def test_format_plan_table() -> None:
    chunks = plan_chunks(parse_storyboard("0s: woman stands by shelf\n1s: woman pets cat", "film"), 2.5, 1)
    assert format_plan(chunks) == (
        "chunk  0   0.0s-  1.0s  film, woman stands by shelf\n"
        "chunk  1   1.0s-  2.0s  film, woman pets cat\n"
        "chunk  2   2.0s-  2.5s  film, woman pets cat"
    )


def test_format_plan_truncates_long_prompts() -> None:
    line = format_plan(plan_chunks(parse_storyboard("0s: " + "w" * 200), 1, 1))
    assert line == "chunk  0   0.0s-  1.0s  " + "w" * 69 + "…"


def test_plan_to_json_rows() -> None:
    rows = plan_to_json(plan_chunks(parse_storyboard("[0s-1s: a]\n2s: b", "g"), 3, 1))
    assert rows == [
        {"index": 0, "start": 0.0, "end": 1.0, "prompt": "g, a", "segment_line": 1},
        {"index": 1, "start": 1.0, "end": 2.0, "prompt": "g", "segment_line": None},
        {"index": 2, "start": 2.0, "end": 3.0, "prompt": "g, b", "segment_line": 2},
    ]
    json.dumps(rows)  # must be serialisable as-is
