"""Precomputed text embeddings: caption -> text-encoder output, so training needs no text encoder at all.

File format (safetensors, nothing pickled):
  tensors   "text.0", "text.1", ...: [tokens, text_dim] each (float32, float16 or bfloat16), the encoder's
            output for the caption's real tokens; trailing all-zero rows (padding) are dropped when saving.
  metadata  pfp_kind = "text_embeddings", format = "1",
            texts = JSON list of the captions, texts[i] <-> "text.i" (exact strings, as the caption files give them),
            text_dim, max_length (the encoder's token limit), encoder (its name: "umt5-xxl", "hash", ...).
The lookup zero-pads (or cuts) every embedding to the DiT's text_len, as Wan pads its T5 output to 512 tokens.
The caption "" is the empty prompt, used for frames without a caption; without it they get zeros.

`python -m pfp_core embed-texts --data DIR --out FILE` writes such a file with the built-in hash encoder
(pfp_core/model/text.py): enough for the tiny model and for testing the path end to end. For a real Wan model, embed
the same captions with Wan's UMT5-XXL on a machine that has ComfyUI and the text-encoder weights; README
("Training your own encoder", Data) has the recipe, which runs inside ComfyUI and not here (no weights).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..atomic import save_tensors
from .. import limits
from ..tensor_files import CheckpointError, read_safetensors
from ..model.text import TextEncoder

KIND = "text_embeddings"
FORMAT = "1"
FIELD = "text embeddings"


@dataclass
class TextEmbeddings:
    table: dict[str, torch.Tensor]  # caption -> [tokens, text_dim]
    text_dim: int
    max_length: int
    encoder: str
    path: Path

    def check_text_dim(self, text_dim: int, model: str) -> None:
        if self.text_dim != text_dim:
            raise CheckpointError(f"{FIELD}: {self.path.name} holds {self.text_dim}-wide embeddings (encoder "
                                  f"{self.encoder}), the DiT '{model}' takes text_dim {text_dim}; embed the captions "
                                  "with the DiT's own text encoder (Wan: UMT5-XXL, 4096 wide)")

    def check_covers(self, captions: Iterable[str]) -> None:
        for caption in sorted(captions):
            self.embedding(caption)

    def embedding(self, caption: str) -> torch.Tensor:
        """[tokens, text_dim]; the empty caption falls back to zero tokens (a zero context)."""
        if caption in self.table:
            return self.table[caption]
        if not caption:
            return torch.zeros(0, self.text_dim)
        shown = caption if len(caption) <= 60 else caption[:59] + "…"
        raise CheckpointError(f"{FIELD}: caption '{shown}' is not in {self.path.name}; rebuild the file from the "
                              "caption files of this --data folder (python -m pfp_core embed-texts, or the UMT5 "
                              "recipe in pfp_core/training/text_embeddings.py)")

    def context(self, captions: list[str], text_len: int) -> torch.Tensor:
        """DiT text context [B, text_len, text_dim], zero-padded like Wan pads its T5 output."""
        context = torch.zeros(len(captions), text_len, self.text_dim)
        for row, caption in enumerate(captions):
            tokens = self.embedding(caption)[:text_len]
            context[row, : len(tokens)] = tokens.float()
        return context


@dataclass
class FrameCaptions:
    """A batch's captions, frame by frame, and the table that embeds them."""

    captions: list[list[str]]  # [B][T]
    texts: TextEmbeddings
    text_len: int

    def context(self, frame_times: torch.Tensor) -> torch.Tensor:
        """[B, text_len, text_dim] for the caption active at each row's earliest denoised frame: the start of a
        generated chunk, or the earliest retrieved frame. frame_times [B, n] index frames (one latent per frame
        with the space-to-depth VAE)."""
        first = frame_times.min(dim=1).values.tolist()
        return self.texts.context([row[t] for row, t in zip(self.captions, first)], self.text_len)


def save_text_embeddings(embeddings: dict[str, torch.Tensor], path: str | Path, encoder: str, max_length: int) -> Path:
    """Write caption -> [tokens, text_dim] (a leading batch dimension of 1 is accepted) in the format above."""
    texts = list(embeddings)
    tensors = {f"text.{i}": without_padding(as_tokens(embeddings[text], text)) for i, text in enumerate(texts)}
    widths = {tensor.shape[1] for tensor in tensors.values()}
    if len(widths) != 1:
        raise ValueError(f"{FIELD}: embeddings of different widths {sorted(widths)}; use one text encoder for all "
                         "captions")
    metadata = {"pfp_kind": KIND, "format": FORMAT, "texts": json.dumps(texts), "text_dim": str(widths.pop()),
                "max_length": str(max_length), "encoder": encoder}
    return save_tensors(tensors, path, metadata)


def as_tokens(embedding: torch.Tensor, text: str) -> torch.Tensor:
    if embedding.dim() == 3 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.dim() != 2:
        raise ValueError(f"{FIELD}: the embedding of '{text[:60]}' has shape {list(embedding.shape)}; "
                         "expected [tokens, text_dim]")
    return embedding


def without_padding(tokens: torch.Tensor) -> torch.Tensor:
    used = torch.nonzero(tokens.abs().sum(dim=1)).flatten()
    return tokens[: int(used[-1]) + 1 if len(used) else 0]


def load_text_embeddings(path: str | Path) -> TextEmbeddings:
    path = Path(path)
    tensors, metadata = read_safetensors(path, FIELD)
    if metadata.get("pfp_kind") != KIND:
        raise CheckpointError(f"{FIELD}: {path.name} is not a text-embedding file (no pfp_kind={KIND} metadata); "
                              "build one with `python -m pfp_core embed-texts`")
    try:
        texts = limits.parse_json(metadata["texts"], "texts")
        text_dim, max_length = int(metadata["text_dim"]), int(metadata["max_length"])
        table = {text: tensors[f"text.{i}"] for i, text in enumerate(texts)}
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{FIELD}: {path.name} has unreadable metadata or misses a tensor ({error}); "
                              "rebuild it") from None
    wrong = [text for text, tensor in table.items() if tensor.dim() != 2 or tensor.shape[1] != text_dim]
    if wrong:
        raise CheckpointError(f"{FIELD}: {path.name}: the embedding of '{wrong[0][:60]}' is not [tokens, {text_dim}]; "
                              "rebuild the file")
    return TextEmbeddings(table, text_dim, max_length, metadata.get("encoder", "unknown"), path)


def embed_captions(captions: list[str], encoder: TextEncoder, encoder_name: str, max_length: int, out: str | Path,
                   progress: bool = False) -> Path:
    """Embed "" and every caption with `encoder` and write the file."""
    texts = [""] + [caption for caption in captions if caption]
    embeddings = {text: encoder.encode([text])[0] for text in tqdm(texts, desc="embed", unit="caption",
                                                                  disable=not progress)}
    return save_text_embeddings(embeddings, out, encoder_name, max_length)
