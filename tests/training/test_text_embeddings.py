"""Precomputed caption embeddings: the file format, the lookup into the DiT context, and training on real video
files with captions through the real CLI."""
import json

import pytest
import torch

from pfp_core.training import procedural
from pfp_core.atomic import save_tensors
from pfp_core.model.checkpoint import CheckpointError, load_dit
from pfp_core.cli import main
from pfp_core.model.text import HashTextEncoder
from pfp_core.training.text_embeddings import FrameCaptions, load_text_embeddings, save_text_embeddings
from pfp_core.training.loop import TrainSettings, train
from pfp_core.video_io import write_video

DIM = 8


def padded(rows: int, length: int = 6, seed: int = 0) -> torch.Tensor:
    """[1, length, DIM]: `rows` real tokens, then zero padding, as Wan's T5 returns them."""
    tokens = torch.zeros(1, length, DIM)
    tokens[0, :rows] = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed)) + 0.1
    return tokens


def test_round_trip_trims_padding_and_the_context_pads_to_the_dits_length(tmp_path):
    cat, shelf = padded(3, seed=1), padded(5, seed=2)
    path = save_text_embeddings({"": padded(1), "woman pets cat": cat, "woman by shelf": shelf[0]},
                                tmp_path / "t.safetensors", encoder="test", max_length=6)
    texts = load_text_embeddings(path)
    assert (texts.text_dim, texts.max_length, texts.encoder) == (DIM, 6, "test")
    assert texts.table["woman pets cat"].shape == (3, DIM)  # padding is not stored
    context = texts.context(["woman pets cat", "", "woman by shelf"], text_len=4)
    assert context.shape == (3, 4, DIM)
    assert torch.equal(context[0, :3], cat[0, :3]) and not context[0, 3:].any()
    assert torch.equal(context[1, :1], padded(1)[0, :1]) and not context[1, 1:].any()  # "" is the file's empty prompt
    assert torch.equal(context[2], shelf[0, :4])  # longer than text_len: cut


def test_without_an_empty_prompt_entry_captionless_frames_get_zeros(tmp_path):
    texts = load_text_embeddings(save_text_embeddings({"a cat": padded(2)}, tmp_path / "t.safetensors", "test", 6))
    assert not texts.context(["", ""], text_len=4).any()


def test_the_context_uses_the_caption_at_each_rows_earliest_denoised_frame(tmp_path):
    path = save_text_embeddings({"early": padded(1, seed=1), "late": padded(1, seed=2)}, tmp_path / "t.safetensors",
                                "test", 6)
    captions = FrameCaptions([["early"] * 4 + ["late"] * 4, ["early"] * 8], load_text_embeddings(path), text_len=2)
    context = captions.context(torch.tensor([[6, 5, 7], [3, 0, 1]]))
    assert torch.equal(context[0, 0], padded(1, seed=2)[0, 0]) and torch.equal(context[1, 0], padded(1, seed=1)[0, 0])


def test_a_caption_missing_from_the_file_is_named_with_the_fix(tmp_path):
    texts = load_text_embeddings(save_text_embeddings({"a cat": padded(2)}, tmp_path / "t.safetensors", "test", 6))
    with pytest.raises(CheckpointError, match=r"^text embeddings: caption 'a dog' is not in t\.safetensors; .*embed-t"):
        texts.context(["a cat", "a dog"], text_len=4)


@pytest.mark.parametrize("write,message", [
    (lambda path: path.write_bytes(b"\x80\x04junk"), "pickle"),
    (lambda path: path.write_bytes(b"\x08" + b"\x00" * 7 + b"not json"), "not a readable safetensors file"),
    (lambda path: save_tensors({"w": torch.zeros(2)}, path, {"pfp_kind": "dit"}), "not a text-embedding file"),
])
def test_files_that_are_not_text_embeddings_are_refused_in_one_line(tmp_path, write, message):
    path = tmp_path / "t.safetensors"
    write(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_text_embeddings(path)
    assert "\n" not in str(error.value)


def captioned_folder(root):
    """Two real 4 s videos at 8 fps, one with a two-line caption file."""
    for i in range(2):
        write_video(procedural.make_video(i, 32, 32, 8).frames, root / f"clip{i}.mp4", 8)
    (root / "clip0.txt").write_text("0s: woman stands by shelf\n2s: woman pets cat\n")
    return root


def test_embed_texts_writes_the_hash_embedding_of_every_caption_and_the_empty_prompt(tmp_path, capsys):
    data = captioned_folder(tmp_path / "data")
    assert main(["embed-texts", "--data", str(data), "--out", str(tmp_path / "t.safetensors"), "--quiet"]) == 0
    assert "2 captions and the empty prompt" in capsys.readouterr().out
    texts = load_text_embeddings(tmp_path / "t.safetensors")
    assert sorted(texts.table) == ["", "woman pets cat", "woman stands by shelf"] and texts.encoder == "hash"
    expected = HashTextEncoder(4096, 32, "zeros").encode(["woman pets cat"])  # padded as Wan pads T5
    assert torch.equal(texts.context(["woman pets cat"], 32), expected)


def test_embed_texts_without_caption_files_says_how_to_write_one(tmp_path, capsys):
    write_video(procedural.make_video(0, 8, 32, 8).frames, tmp_path / "a.mp4", 8)
    assert main(["embed-texts", "--data", str(tmp_path), "--out", str(tmp_path / "t.safetensors"), "--quiet"]) == 2
    assert "clip.txt next to clip.mp4" in capsys.readouterr().err


def test_pretrain_on_a_video_folder_with_caption_embeddings_writes_a_checkpoint_and_uses_the_text(tmp_path, capsys):
    data = captioned_folder(tmp_path / "data")
    embeddings = tmp_path / "texts.safetensors"
    assert main(["embed-texts", "--data", str(data), "--out", str(embeddings), "--quiet"]) == 0
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--text-embeddings", str(embeddings), "--steps", "3", "--batch", "2",
                 "--history-frames", "8", "--out", str(out), "--quiet"]) == 0
    assert "--data: 2 videos usable, 0 skipped" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} >= {"dit.safetensors", "encoder.safetensors", "optimizer.safetensors"}
    assert load_dit(out / "dit.safetensors").config.name == "tiny"
    with_text = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    # The same run with a zero text context: same data and noise, so any difference comes from the captions.
    without_text = train(TrainSettings(stage="pretrain", out=tmp_path / "plain", steps=3, batch=2, history_frames=(8,),
                                       data=data), progress=False)
    assert len(with_text) == 3 and with_text[2] != pytest.approx(without_text[2], abs=1e-6)


def test_text_embeddings_of_the_wrong_width_are_refused_before_training(tmp_path):
    data = captioned_folder(tmp_path / "data")
    embeddings = save_text_embeddings({"woman stands by shelf": padded(2), "woman pets cat": padded(2)},
                                      tmp_path / "t.safetensors", "test", 6)
    settings = TrainSettings(stage="pretrain", out=tmp_path / "run", steps=1, batch=1, history_frames=(8,), data=data,
                             text_embeddings=embeddings)
    with pytest.raises(CheckpointError, match=r"holds 8-wide embeddings .* takes text_dim 4096"):
        train(settings, progress=False)
    assert not (tmp_path / "run" / "dit.safetensors").exists()


def test_captions_of_the_folder_missing_from_the_file_fail_before_training(tmp_path):
    data = captioned_folder(tmp_path / "data")
    embeddings = save_text_embeddings({"woman stands by shelf": padded(2)}, tmp_path / "t.safetensors", "test", 6)
    settings = TrainSettings(stage="pretrain", out=tmp_path / "run", steps=1, batch=1, history_frames=(8,), data=data,
                             text_embeddings=embeddings)
    with pytest.raises(CheckpointError, match="caption 'woman pets cat' is not in t.safetensors"):
        train(settings, progress=False)
