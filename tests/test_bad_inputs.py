"""The command line's bad-input catalog (tests/bad_inputs.py), path containment, and a guard that nothing in the
pack can unpickle."""
import ast
import contextlib

import pytest

from bad_inputs import ACCEPTED, CASES, REPO, check_outcome, run_in_process, run_process, snapshot

from pfp_core.inputs import finite, inside
from pfp_core.video_io import read_video


def run_case(case, tmp_path, capfd, as_process: bool) -> str:
    with contextlib.ExitStack() as stack:
        argv = case.setup(tmp_path, stack)
        before = snapshot(tmp_path)
        if as_process:
            code, stderr = run_process(argv, case.file_size_limit)
        else:
            code, stderr = run_in_process(argv, capfd)
        return check_outcome(case, tmp_path, before, code, stderr)


def test_the_catalog_has_at_least_25_error_cases_with_distinct_names():
    assert len(CASES) >= 25
    assert len({case.name for case in CASES + ACCEPTED}) == len(CASES + ACCEPTED)


@pytest.mark.parametrize("case", [c for c in CASES if not c.file_size_limit], ids=lambda c: c.name)
def test_bad_input_in_process_gives_one_line_naming_the_field(case, tmp_path, capfd):
    run_case(case, tmp_path, capfd, as_process=False)


@pytest.mark.parametrize("case", [c for c in CASES if c.process], ids=lambda c: c.name)
def test_bad_input_as_a_real_process_gives_one_line_naming_the_field(case, tmp_path, capfd):
    run_case(case, tmp_path, capfd, as_process=True)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
def test_valid_edge_inputs_make_the_promised_frames(case, tmp_path, capfd):
    run_case(case, tmp_path, capfd, as_process=False)


def test_a_full_disk_keeps_finished_chunks_and_the_run_resumes_once_there_is_room(tmp_path, capfd):
    case = next(c for c in CASES if c.file_size_limit)
    with contextlib.ExitStack() as stack:
        argv = case.setup(tmp_path, stack)
    before = snapshot(tmp_path)
    code, stderr = run_process(argv, case.file_size_limit)
    message = check_outcome(case, tmp_path, before, code, stderr)
    assert "cannot write chunk 1" in message and "File too large" in message
    code, stderr = run_in_process(argv, capfd)  # room again: the same command finishes from chunk 0
    assert code == 0, stderr
    assert len(read_video(tmp_path / "v.mp4")[0]) == 16
    assert snapshot(tmp_path)["v_chunks/chunk_0000.safetensors"] == before["v_chunks/chunk_0000.safetensors"]


# ------------------------------------------------------------------------------------------- path containment

def test_names_resolve_inside_their_folder(tmp_path):
    (tmp_path / "runs").mkdir()
    assert inside(tmp_path / "runs", "a/b", "run_name") == (tmp_path / "runs" / "a" / "b").resolve()
    assert inside(tmp_path / "runs", "a/../b", "run_name") == (tmp_path / "runs" / "b").resolve()


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/etc", "", "  ", ".", "link/x", "link"])
def test_names_that_leave_their_folder_are_refused_in_one_style(name, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError) as caught:
        inside(tmp_path / "runs", name, "run_name")
    assert str(caught.value).startswith(f"run_name: '{name}' must be a name inside {tmp_path.name}/runs/, without '..'")


def test_finite_names_the_first_bad_value():
    import torch

    finite(cfg=1.0, image=torch.zeros(2))
    with pytest.raises(ValueError, match="^image: contains NaN or infinity"):
        finite(cfg=1.0, image=torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="^cfg: contains NaN or infinity"):
        finite(cfg=float("inf"))


# ---------------------------------------------------------------------------------------------- safe loading

UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"),
              ("joblib", "load"), ("np", "load"), ("numpy", "load")}


def unpickler_calls(source: str) -> list[int]:
    """Lines that call an unpickler (torch.load, pickle.load(s), np.load, ...) or import from pickle-like modules."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in UNPICKLERS:
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "joblib"):
            lines.append(node.lineno)
    return lines


def test_the_unpickler_guard_finds_torch_load_and_pickle_imports():
    assert unpickler_calls("import torch\nx = 1\nstate = torch.load('x.pt')\n") == [3]
    assert unpickler_calls("from pickle import loads\n") == [1]
    assert unpickler_calls("from safetensors.torch import load_file\nload_file('x')\n") == []


def test_no_module_of_the_pack_calls_an_unpickler():
    """Only safetensors are read: nothing in pfp_core or nodes can unpickle."""
    files = sorted((REPO / "pfp_core").rglob("*.py")) + sorted((REPO / "nodes").rglob("*.py"))
    assert len(files) > 20
    found = {str(path.relative_to(REPO)): unpickler_calls(path.read_text()) for path in files}
    assert not {name: lines for name, lines in found.items() if lines}
