"""The model: a ModernBERT masked LM built from a config (never downloaded), on packed batches.

A batch row packs several documents; attention must stay inside each one. Two routes do that:

- FlashAttention-2 varlen (GPU, `flash_attn` importable): the batch is flattened to [1, B·L] and
  the server's `cu_seqlens` go to the kernel as `cu_seq_lens_q/k` with positions restarting per
  document.
- Everywhere else (CPU, sdpa or eager): a dict of per-layer-type masks built by
  `transformers.masking_utils` — `create_bidirectional_mask` for "full_attention" and
  `create_bidirectional_sliding_window_mask` for "sliding_attention", both AND-ed with
  `packed_sequence_mask_function(doc_ids)`. The obvious alternatives are silently wrong in
  transformers 5.x: `cu_seq_lens_*` keywords are ignored outside flash attention, restarting
  `position_ids` alone does not isolate documents, and one 4-D block-diagonal mask also reaches the
  sliding-window layers, which then lose their window. The masks cost O(B·L²) booleans: fine on CPU
  at short lengths.

The loss is computed on masked positions only (ModernBERT's "sparse prediction"): the vocabulary
projection runs on ~5–30 % of the tokens, and per-token losses come back so the train loop can
split them by language.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ModernBertConfig, ModernBertForMaskedLM
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_bidirectional_sliding_window_mask,
    packed_sequence_mask_function,
)

IGNORE_INDEX = -100
Attention = Literal["auto", "flash_attention_2", "sdpa", "eager"]

# Architecture presets. `small` and `base` are mmBERT's published sizes (jhu-clsp/mmBERT-small and
# -base): 22 layers, a global-attention layer every 3rd (the others slide over a 128-token window),
# GLU MLP with intermediate 1152, RoPE θ = 160k on both layer types (ModernBERT used 10k on the
# local layers; mmBERT raised it for its 8k context). `base` is also ModernBERT-base's shape.
# `tiny` keeps the same layer pattern (4 layers: full, sliding, sliding, full) with a 64-token
# window so that the sliding layers matter at the demo's 128–256 token sequences on CPU.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, local_attention=64),
    "small": dict(hidden_size=384, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=6, local_attention=128),
    "base": dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12, local_attention=128),
}
ROPE_THETA = 160_000.0
# Peak learning rates: mmBERT trained small and base at 8e-4 with a large batch; the tiny CPU
# model learns fastest at a higher rate over a few hundred steps.
DEFAULT_PEAK_LR: dict[str, float] = {"tiny": 3e-3, "small": 8e-4, "base": 8e-4}


@dataclass(frozen=True)
class TokenizerSpec:
    """What the model needs to know about the tokenizer (the server's manifest says it)."""

    vocab_size: int
    pad_id: int = 0
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None


def flash_attention_available() -> bool:
    """True when FlashAttention-2 can run here: a CUDA device and the `flash_attn` package."""
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def resolve_attention(attn: Attention, device: torch.device) -> str:
    """The attention implementation to build: `auto` is flash_attention_2 on a GPU with flash_attn, else sdpa."""
    if attn == "auto":
        return "flash_attention_2" if device.type == "cuda" and flash_attention_available() else "sdpa"
    if attn == "flash_attention_2" and not flash_attention_available():
        raise ValueError("attn='flash_attention_2' needs a CUDA device and the flash_attn package; use 'sdpa' or 'auto'")
    if attn not in ("flash_attention_2", "sdpa", "eager"):
        raise ValueError(f"attn must be one of auto, flash_attention_2, sdpa, eager; got {attn!r}")
    return attn


def model_config(preset: str, tokenizer: TokenizerSpec, attn_implementation: str = "sdpa") -> ModernBertConfig:
    """ModernBertConfig of a preset with the server's vocabulary and special ids."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    V = tokenizer.vocab_size
    for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
        v = getattr(tokenizer, name)
        if v is not None and not 0 <= v < V:
            raise ValueError(f"tokenizer {name}={v} is outside the vocabulary of {V} tokens")
    rope = {"rope_type": "default", "rope_theta": ROPE_THETA}
    return ModernBertConfig(
        vocab_size=V,
        **PRESETS[preset],
        global_attn_every_n_layers=3,
        pad_token_id=tokenizer.pad_id,
        cls_token_id=tokenizer.cls_id,
        bos_token_id=tokenizer.cls_id,
        sep_token_id=tokenizer.sep_id,
        eos_token_id=tokenizer.sep_id,
        rope_parameters={"full_attention": dict(rope), "sliding_attention": dict(rope)},
        attn_implementation=attn_implementation,
    )


# -- document boundaries ------------------------------------------------------------------------

def document_ids(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """int64[B, L]: the index of the document each token belongs to (unique across the batch)."""
    n = batch * seq_len
    marks = torch.zeros(n, dtype=torch.int64, device=cu_seqlens.device)
    marks[cu_seqlens[:-1].long()] = 1
    return (torch.cumsum(marks, 0) - 1).view(batch, seq_len)


def position_ids(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """int64[B, L]: each token's position inside its document (0 at every boundary)."""
    doc = document_ids(cu_seqlens, batch, seq_len).view(-1)
    starts = cu_seqlens[:-1].long()
    return (torch.arange(batch * seq_len, device=cu_seqlens.device) - starts[doc]).view(batch, seq_len)


def document_masks(config: ModernBertConfig, doc_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The per-layer-type attention masks that keep attention inside documents (sdpa / eager)."""
    B, L = doc_ids.shape
    # Only shape, dtype and device of `inputs_embeds` are read by the mask builders.
    like = torch.empty((B, L, 1), dtype=dtype, device=doc_ids.device)
    same_doc = packed_sequence_mask_function(doc_ids)
    return {
        "full_attention": create_bidirectional_mask(config=config, inputs_embeds=like, attention_mask=None,
                                                    and_mask_function=same_doc),
        "sliding_attention": create_bidirectional_sliding_window_mask(config=config, inputs_embeds=like,
                                                                      attention_mask=None, and_mask_function=same_doc),
    }


# -- the trained module ---------------------------------------------------------------------------

class PackedMaskedLM(nn.Module):
    """ModernBertForMaskedLM on packed batches; `forward` returns the loss of every masked token.

    The wrapper is what FSDP2 shards as its root, so one forward call unshards the embeddings,
    head and (tied) decoder together with the encoder layers."""

    def __init__(self, mlm: ModernBertForMaskedLM):
        super().__init__()
        self.mlm = mlm

    @property
    def config(self) -> ModernBertConfig:
        return self.mlm.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.mlm.model.layers

    def hidden_states(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Encoder output [B, L, H] with attention kept inside the documents of `cu_seqlens`."""
        B, L = input_ids.shape
        pos = position_ids(cu_seqlens, B, L)
        if self.config._attn_implementation == "flash_attention_2":
            cu = cu_seqlens.to(torch.int32)
            out = self.mlm.model(input_ids=input_ids.reshape(1, B * L), position_ids=pos.reshape(1, B * L),
                                 cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_seqlen, max_length_k=max_seqlen)
            return out.last_hidden_state.view(B, L, -1)
        masks = document_masks(self.config, document_ids(cu_seqlens, B, L), self.mlm.model.embeddings.norm.weight.dtype)
        return self.mlm.model(input_ids=input_ids, attention_mask=masks, position_ids=pos).last_hidden_state

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """float32[M]: cross-entropy of each masked token (labels != -100), in row-major order."""
        h = self.hidden_states(input_ids, cu_seqlens, max_seqlen)
        flat = labels.reshape(-1)
        sel = torch.nonzero(flat != IGNORE_INDEX, as_tuple=True)[0]
        logits = self.mlm.decoder(self.mlm.head(h.reshape(-1, h.shape[-1]).index_select(0, sel)))
        return F.cross_entropy(logits.float(), flat.index_select(0, sel).long(), reduction="none")

    def logits(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Dense logits [B, L, V] (for evaluation and tests)."""
        return self.mlm.decoder(self.mlm.head(self.hidden_states(input_ids, cu_seqlens, max_seqlen)))


def build_model(preset: str, tokenizer: TokenizerSpec, *, attn: Attention = "auto", device: torch.device | str = "cpu",
                seed: int = 0) -> PackedMaskedLM:
    """A freshly initialised PackedMaskedLM (same weights for the same seed on every rank)."""
    device = torch.device(device)
    cfg = model_config(preset, tokenizer, resolve_attention(attn, device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlm = ModernBertForMaskedLM(cfg)
    return PackedMaskedLM(mlm).to(device)


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def expected_initial_loss(vocab_size: int) -> float:
    """ln(V): the loss of a uniform prediction, where an untrained model starts."""
    return math.log(vocab_size)
