import pytest
import torch
from safetensors.torch import load_file

from pfp_core.atomic import replacing, save_tensors, write_bytes


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_bytes(tmp_path / "a.json", b"old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_tensors_land_whole_under_the_final_name(tmp_path):
    path = save_tensors({"x": torch.arange(4.0)}, tmp_path / "sub" / "t.safetensors", {"k": "v"})
    assert torch.equal(load_file(str(path))["x"], torch.arange(4.0))
    assert not list(path.parent.glob("*.tmp"))
