"""Text conditioning without downloaded weights.

`HashTextEncoder` maps each lower-cased word to a fixed pseudo-random vector of Wan's text width (seeded by the
word's CRC32), padded with zeros to the model's text length like Wan pads T5 output. It is deterministic and
needs no file, which is what a tiny CPU model trained on captionless procedural videos can use; real Wan models
get UMT5 embeddings from ComfyUI's CLIP loader instead.
"""
from __future__ import annotations

import re
import zlib
from typing import Protocol

import torch


class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor: ...  # [B, text_len, text_dim]


class HashTextEncoder:
    def __init__(self, text_dim: int = 4096, text_len: int = 32):
        self.text_dim, self.text_len = text_dim, text_len

    def word_vector(self, word: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
        return torch.randn(self.text_dim, generator=generator)

    def context(self, captions: list[str], text_len: int) -> torch.Tensor:
        """The lookup interface of precomputed embeddings (pfp_core.training.text_embeddings), for captioned training."""
        return HashTextEncoder(self.text_dim, text_len).encode(captions)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        context = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for row, prompt in enumerate(prompts):
            words = re.findall(r"\w+", prompt.lower())[: self.text_len]
            for col, word in enumerate(words):
                context[row, col] = self.word_vector(word)
        return context
