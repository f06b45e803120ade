"""The tiny word-hash text encoder's padding, and how a pair carries it from training to generation."""
import json
from pathlib import Path

import pytest
import torch

from pfp_core.config import EncoderConfig
from pfp_core.generation.pipeline import load_engine
from pfp_core.model.checkpoint import load_encoder
from pfp_core.model.text import HashTextEncoder
from pfp_core.training.loop import TrainSettings, train


def test_mean_padding_fills_the_positions_after_the_words_with_their_mean():
    encoder = HashTextEncoder(64, 8, "mean")
    left, right, empty = encoder.encode(["camera pans left", "camera pans right", ""])
    words = torch.stack([encoder.word_vector(w) for w in ("camera", "pans", "left")])
    assert torch.equal(left[:3], words)
    assert torch.allclose(left[3:], words.mean(dim=0).expand(5, -1))
    # the direction word now reaches every padded position, which zero padding leaves identical
    assert all(not torch.equal(a, b) for a, b in zip(left[3:], right[3:]))
    assert not empty.any()  # the empty prompt (CFG's negative) stays the zero context
    zeros = HashTextEncoder(64, 8, "zeros").encode(["camera pans left"])[0]
    assert torch.equal(zeros[:3], words) and not zeros[3:].any()


def test_an_unknown_padding_is_refused_in_one_line():
    with pytest.raises(ValueError, match="^text_padding: 'left' is unknown; use one of mean, zeros$"):
        HashTextEncoder(64, 8, "left")


def test_training_records_the_padding_and_generation_pads_prompts_so(tmp_path: Path):
    """A story-world finetune writes its captions' padding into the encoder file; load_engine's text encoder
    then pads prompts the same way. Files that do not record it (the pairs before the option) read as zeros."""
    for padding in ("mean", "zeros"):
        out = tmp_path / padding
        train(TrainSettings(stage="finetune", out=out, steps=1, batch=1, history_frames=(8,), recent_frames=2,
                            rate="2x2x2", world="story", retrieval_mix=0.0, bf16=False, text_padding=padding),
              progress=False)
        assert load_encoder(out / "encoder.safetensors").config.text_padding == padding
        engine = load_engine(out / "encoder.safetensors", out / "dit.safetensors")
        assert engine.text_encoder.padding == padding
    recorded = json.loads(load_encoder(tmp_path / "mean" / "encoder.safetensors").config.to_json())
    del recorded["text_padding"]
    assert EncoderConfig.from_json(json.dumps(recorded)).text_padding == "zeros"
    with pytest.raises(ValueError, match="^text-padding: 'none' is unknown"):
        TrainSettings(stage="finetune", out=tmp_path, text_padding="none")
