"""The web timeline's plan request (pfp_core/generation/plan_request.py, served by nodes/routes.py): every bad body of the
catalog (tests/bad_inputs.py ROUTE_CASES) is one line naming its field and the fix, with the caps of the command
line; a good body plans exactly what the command line plans. The same cases go through the real aiohttp handler
in ComfyUI in tests/integration/test_web_timeline.py."""
import pytest
from bad_inputs import ROUTE_CASES, plan_body, plan_bytes

from pfp_core import limits
from pfp_core.generation.generator import frame_grid
from pfp_core.generation.plan_request import BadRequest, parse_body, plan_response
from pfp_core.generation.storyboard import parse_storyboard, plan_chunks


@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda c: c.name)
def test_a_bad_plan_request_is_one_line_naming_the_field_and_the_fix(case):
    with pytest.raises(BadRequest) as refused:
        parse_body(case.body)
    message = str(refused.value)
    assert message.startswith(f"{case.field}: ") and "\n" not in message and len(message) < 300, message
    assert "; " in message, f"no fix given: {message}"


@pytest.mark.parametrize("name, cap", [("seconds", limits.MAX_VIDEO_SECONDS), ("fps", limits.MAX_FPS),
                                       ("chunk_seconds", limits.MAX_VIDEO_SECONDS)])
def test_the_caps_are_the_command_lines_and_the_cap_itself_is_accepted(name, cap):
    changes = {name: cap, "chunk_seconds": cap} if name != "fps" else {name: cap}
    assert parse_body(plan_bytes(**changes))[name] == cap


def test_a_good_request_plans_what_the_command_line_plans():
    body = plan_body(storyboard="0s: a cat\n[5s-10s]: it sleeps\n12s: it eats", global_prompt="film", seconds=17.3,
                     fps=12, chunk_seconds=4)
    answer = plan_response(parse_body(plan_bytes(**body)))
    total, chunk = frame_grid(17.3, 4, 12)
    expected = plan_chunks(parse_storyboard(body["storyboard"], "film"), total / 12, chunk / 12)
    assert [(row["index"], row["prompt"]) for row in answer["chunks"]] == [(c.index, c.prompt) for c in expected]
    assert answer["chunks"][0]["label"] == "a cat"


def test_a_storyboard_mistake_is_an_answer_naming_its_line_not_a_bad_request():
    answer = plan_response(parse_body(plan_bytes(storyboard="3s: a cat\n1s: a dog")))
    assert answer["line"] == 2 and answer["error"].startswith("storyboard line 2 ")
