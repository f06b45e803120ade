"""Property tests (hypothesis): whatever text reaches the storyboard parser, and whatever number text reaches the
command line's numeric flags, the outcome is a result or the project's own one-line error, never another
exception. Bounded (max_examples, deadline) so the file adds well under a minute to the suite."""
import contextlib
import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfp_core import limits
from pfp_core.cli import build_parser, main
from pfp_core.generation.storyboard import StoryboardError, parse_storyboard, plan_chunks

BOUNDED = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# Pieces a storyboard is made of, including the near-misses: times without 's', double brackets, huge exponents.
TIME_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x}s"),
                      st.integers(-10, 10**400).map(str),
                      st.integers(0, 10**6).map(lambda n: f"{n}s"),
                      st.tuples(st.integers(0, 99), st.integers(0, 99)).map(lambda t: f"{t[0]}:{t[1]:02d}"),
                      st.sampled_from(["1:5", "5sec", "1e309s", "-3s", "0", "", "1e308s", "9" * 400 + "s"]))
PIECE = st.one_of(st.builds(lambda t, p: f"{t}: {p}", TIME_TEXT, st.text(max_size=12)),
                  st.builds(lambda a, b, p: f"[{a}-{b}: {p}]", TIME_TEXT, TIME_TEXT, st.text(max_size=12)),
                  st.builds(lambda a, b, p: f"[[{a}-{b}: {p}]]", TIME_TEXT, TIME_TEXT, st.text(max_size=8)),
                  st.builds(lambda p: f"global: {p}", st.text(max_size=12)),
                  st.sampled_from(["# note", "", "\ufeff0s: a cat", " / ", "\0", "a cat"]),
                  st.text(max_size=20))
STORYBOARD = st.lists(PIECE, max_size=8).map("\n".join)
SECONDS = st.one_of(st.floats(min_value=1e-6, max_value=limits.MAX_VIDEO_SECONDS), st.floats(), st.integers(-5, 10**6))


def one_line_storyboard_error(error: StoryboardError) -> bool:
    text = str(error)
    return "\n" not in text and text.split(":")[0].split(" line")[0] in ("storyboard", "global prompt", "seconds",
                                                                        "chunk_seconds")


@BOUNDED
@given(STORYBOARD, SECONDS, SECONDS)
def test_any_storyboard_plans_or_names_the_problem_in_one_line(text, seconds, chunk_seconds):
    try:
        chunks = plan_chunks(parse_storyboard(text), seconds, chunk_seconds)
    except StoryboardError as error:
        assert one_line_storyboard_error(error), str(error)
        return
    assert 1 <= len(chunks) <= limits.MAX_CHUNKS + 1
    assert all(chunk.prompt or chunk.segment_line is None for chunk in chunks)


NUMBER_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-2**70, 2**70).map(str),
                        st.integers(-10**400, 10**400).map(str),
                        st.sampled_from(["1e308", "-0", "0x10", "1_000", "", "nan", "inf", "1e-320", "9" * 5000, "½"]),
                        st.text(max_size=6))
GENERATE_FLAGS = ["--seconds", "--seed", "--steps", "--shift", "--chunk-seconds", "--history-seconds"]
PLAN_FLAGS = ["--width", "--height", "--fps", "--history-seconds", "--chunk-seconds", "--video-seconds", "--batch",
              "--lora-rank"]
TRAIN_FLAGS = ["--steps", "--batch", "--lr", "--seed", "--checkpoint-every", "--lora-rank", "--lora-alpha",
               "--retrieval-mix", "--context-window", "--history-frames"]


def parsed_or_one_line(argv: list[str]) -> object:
    """The parsed arguments, or None after asserting that argparse exited 2 with one line naming the flag."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return build_parser().parse_args(argv)
        except SystemExit as exit_info:
            assert exit_info.code == 2
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and "error: argument" in lines[0] and "Traceback" not in lines[0], lines
    return None


def check_parsed(args: object, flag: str) -> None:
    """A value that got through its flag's type is finite and inside the caps."""
    value = getattr(args, flag.removeprefix("--").replace("-", "_"))
    for item in value if isinstance(value, list) else [value]:
        assert math.isfinite(item) and 0 <= item <= max(limits.MAX_SEED, 1e30)


@BOUNDED
@given(st.sampled_from(GENERATE_FLAGS), NUMBER_TEXT)
def test_generate_numbers_parse_inside_their_caps_or_fail_in_one_line(flag, text):
    args = parsed_or_one_line(["generate", "--image", "x.png", "--storyboard", "0s: a", "--seconds", "1",
                               "--out", "v.mp4", f"{flag}={text}"])
    if args is not None:
        check_parsed(args, flag)


@BOUNDED
@given(st.sampled_from(TRAIN_FLAGS), NUMBER_TEXT)
def test_training_numbers_parse_inside_their_caps_or_fail_in_one_line(flag, text):
    args = parsed_or_one_line(["finetune", "--out", "run", f"{flag}={text}"])
    if args is not None:
        check_parsed(args, flag)


@settings(max_examples=60, deadline=5000)
@given(st.dictionaries(st.sampled_from(PLAN_FLAGS), NUMBER_TEXT, max_size=4), st.sampled_from(["tiny", "wan2.1-1.3b"]))
def test_plan_with_any_numbers_prints_a_plan_or_one_error_line(flags, model):
    """The whole command, not only the parser: a plan, or exit 2 with one line (no OverflowError from the maths)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["plan", "--model", model, "--json", *(f"{flag}={text}" for flag, text in flags.items())])
        except SystemExit as exit_info:
            code = exit_info.code
    lines = stderr.getvalue().strip().splitlines()
    if code == 0:
        assert stdout.getvalue().startswith("{") and not lines
    else:
        assert code == 2 and len(lines) == 1 and "error: " in lines[0] and "Traceback" not in lines[0], lines


# ----------------------------------------------------------------------------------------- the limits module

@pytest.mark.parametrize("text, message", [("[" * 100_000 + "]" * 100_000, "nested more than 64"),
                                           ("[" * 65 + "]" * 65, "nested more than 64")])
def test_json_nesting_is_capped_before_anything_recurses(text, message):
    with pytest.raises(ValueError, match=message):
        limits.parse_json(text, "workflow")
    assert limits.parse_json("[" * 64 + "]" * 64, "workflow") is not None


def test_json_depth_counts_without_recursion():
    assert [limits.json_depth(v) for v in (1, [], {"a": [1, {"b": []}]}, [[[]]])] == [0, 1, 4, 3]


def test_a_seed_is_a_whole_number_from_zero_to_two_to_the_63_minus_one():
    assert limits.check_seed("seed", limits.MAX_SEED) == 2**63 - 1
    for bad in (-1, 2**63, 2**70, 1.0, True):
        with pytest.raises(ValueError, match="^seed: .* is out of range"):
            limits.check_seed("seed", bad)
