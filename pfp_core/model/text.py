"""Text conditioning without downloaded weights.

`HashTextEncoder` maps each lower-cased word to a fixed pseudo-random vector of Wan's text width (seeded by the
word's CRC32) and pads the prompt to the model's text length. It is deterministic and needs no file, which is what
a tiny CPU model trained on procedural videos can use; real Wan models get UMT5 embeddings from ComfyUI's CLIP
loader instead.

Padding: `mean` fills the positions after the words with the mean of the prompt's word vectors, `zeros` with zeros
as Wan pads T5 output. T5's outputs are contextual, so any of its tokens carries the sentence; a word vector carries
one word. With zero padding the tiny DiT learnt to attend to the 29 identical padding tokens and gave the words no
weight (at most 0.001 in every layer), so next to no gradient could teach it what "left" means; with mean padding the
sentence is where its attention already is.
"""
from __future__ import annotations

import re
import zlib
from typing import Protocol

import torch

from ..config import check_text_padding


class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor: ...  # [B, text_len, text_dim]


class HashTextEncoder:
    def __init__(self, text_dim: int = 4096, text_len: int = 32, padding: str = "mean"):
        check_text_padding(padding, "text_padding")
        self.text_dim, self.text_len, self.padding = text_dim, text_len, padding

    def word_vector(self, word: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
        return torch.randn(self.text_dim, generator=generator)

    def context(self, captions: list[str], text_len: int) -> torch.Tensor:
        """The lookup interface of precomputed embeddings (pfp_core.training.text_embeddings), for captioned training."""
        return HashTextEncoder(self.text_dim, text_len, self.padding).encode(captions)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        context = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for row, prompt in enumerate(prompts):
            words = re.findall(r"\w+", prompt.lower())[: self.text_len]
            for col, word in enumerate(words):
                context[row, col] = self.word_vector(word)
            if words and self.padding == "mean":
                context[row, len(words):] = context[row, :len(words)].mean(dim=0)
        return context
