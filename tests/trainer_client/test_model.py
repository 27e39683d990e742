"""Model factory and document masks: a packed row must give the logits of its documents run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ModernBertForMaskedLM

from trainer_client.model import (
    PRESETS, TokenizerSpec, build_model, document_ids, model_config, parameter_count, position_ids,
)

TOK = TokenizerSpec(vocab_size=500, pad_id=0, cls_id=2, sep_id=3, mask_id=4)


def make(attn: str, seed: int = 1):
    return build_model("tiny", TOK, attn=attn, seed=seed).eval()


def docs_batch(lengths: list[list[int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]:
    """Rows packed from documents of the given lengths: (input_ids [B, L], cu_seqlens, docs per row)."""
    g = torch.Generator().manual_seed(seed)
    rows, docs, cu = [], [], [0]
    L = sum(lengths[0])
    for r, lens in enumerate(lengths):
        assert sum(lens) == L
        ds = [torch.randint(5, TOK.vocab_size, (n,), generator=g) for n in lens]
        docs.append(ds)
        rows.append(torch.cat(ds))
        for n in lens:
            cu.append(cu[-1] + n)
    return torch.stack(rows), torch.tensor(cu, dtype=torch.int32), docs


def alone(model, doc: torch.Tensor) -> torch.Tensor:
    """Logits of one document run by itself (HF's own forward: positions 0.., no mask)."""
    return model.mlm(input_ids=doc[None]).logits[0]


def check_packed(model, lengths: list[list[int]], tol: float) -> None:
    ids, cu, docs = docs_batch(lengths)
    with torch.no_grad():
        packed = model.logits(ids, cu, max_seqlen=max(max(r) for r in lengths))
        for r, row_docs in enumerate(docs):
            at = 0
            for d in row_docs:
                diff = (packed[r, at : at + d.numel()] - alone(model, d)).abs().max().item()
                assert diff <= tol, (lengths, r, at, diff)
                at += d.numel()


# Documents longer than the tiny preset's sliding window (64 total, ±32), so the sliding layers'
# window matters, and short ones; several rows with different boundaries. The residual (~2e-7 even
# with eager) is BLAS blocking by shape — a document alone is a [n, H] matmul, packed it is part of
# [B·L, H] — not attention leaking: the next test shows that part exactly.
@pytest.mark.parametrize("attn, tol", [("eager", 1e-6), ("sdpa", 1e-5)])
def test_packed_documents_give_the_logits_of_separate_runs(attn, tol):
    check_packed(make(attn), [[45, 83], [7, 100, 21], [128]], tol)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_other_documents_do_not_change_a_document_by_a_single_bit(attn):
    """Same shapes, other tokens in the neighbouring documents: bit-identical logits."""
    model = make(attn)
    ids, cu, _ = docs_batch([[40, 50, 38], [100, 28]], seed=0)
    other, _, _ = docs_batch([[40, 50, 38], [100, 28]], seed=9)
    mixed = ids.clone()
    mixed[0, :40], mixed[0, 90:], mixed[1, 100:] = other[0, :40], other[0, 90:], other[1, 100:]
    with torch.no_grad():
        a, b = model.logits(ids, cu, 100), model.logits(mixed, cu, 100)
    assert torch.equal(a[0, 40:90], b[0, 40:90]) and torch.equal(a[1, :100], b[1, :100])
    assert not torch.equal(a[0, :40], b[0, :40])


def test_the_obvious_routes_are_silently_wrong():
    """What DEPENDENCIES.md trap 4 warns about: each of these differs from separate runs."""
    model = make("sdpa")
    ids, cu, docs = docs_batch([[45, 83]])
    second = alone(model, docs[0][1])
    with torch.no_grad():
        right = model.logits(ids, cu, max_seqlen=83)[0, 45:]
        no_mask = model.mlm(input_ids=ids).logits[0, 45:]
        pos = position_ids(cu, 1, 128)
        restart_only = model.mlm(input_ids=ids, position_ids=pos).logits[0, 45:]
        doc = document_ids(cu, 1, 128)
        block = (doc[:, None, :, None] == doc[:, None, None, :])  # one 4-D mask for every layer
        one_mask = model.mlm(input_ids=ids, attention_mask=block, position_ids=pos).logits[0, 45:]
    assert (right - second).abs().max() < 1e-5
    for wrong in (no_mask, restart_only, one_mask):
        assert (wrong - second).abs().max() > 1e-4


def test_document_ids_and_positions_match_a_plain_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        B, L = int(rng.integers(1, 5)), int(rng.integers(2, 40))
        cuts = [0]
        for r in range(B):
            inner = sorted(rng.choice(np.arange(1, L), size=int(rng.integers(0, min(4, L - 1) + 1)), replace=False))
            cuts += [r * L + c for c in inner] + [(r + 1) * L]
        cu = torch.tensor(cuts, dtype=torch.int32)
        doc_ref = np.zeros(B * L, np.int64)
        pos_ref = np.zeros(B * L, np.int64)
        for d in range(len(cuts) - 1):
            doc_ref[cuts[d] : cuts[d + 1]] = d
            pos_ref[cuts[d] : cuts[d + 1]] = np.arange(cuts[d + 1] - cuts[d])
        assert np.array_equal(document_ids(cu, B, L).numpy().ravel(), doc_ref)
        assert np.array_equal(position_ids(cu, B, L).numpy().ravel(), pos_ref)


def test_masked_token_losses_match_the_dense_hf_loss():
    """One document per row: the sparse per-token losses average to HF's own MLM loss."""
    model = make("sdpa")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, TOK.vocab_size, (3, 32), generator=g)
    labels = torch.full_like(ids, -100)
    pick = torch.rand(ids.shape, generator=g) < 0.3
    labels[pick] = ids[pick]
    cu = torch.tensor([0, 32, 64, 96], dtype=torch.int32)
    with torch.no_grad():
        per_token = model(ids.int(), labels.int(), cu, 32)
        ref = model.mlm(input_ids=ids, labels=labels).loss
    assert per_token.shape == (int(pick.sum()),) and per_token.dtype == torch.float32
    assert torch.allclose(per_token.mean(), ref, atol=1e-6)


def test_training_step_reduces_the_loss_on_a_fixed_batch():
    model = build_model("tiny", TOK, attn="sdpa", seed=0)
    ids, cu, _ = docs_batch([[30, 34], [64]], seed=5)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3, ids, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids.int(), labels.int(), cu, 64).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5


def test_same_seed_same_weights_and_tied_decoder():
    a, b, c = build_model("tiny", TOK, seed=4), build_model("tiny", TOK, seed=4), build_model("tiny", TOK, seed=5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.mlm.decoder.weight is a.mlm.model.embeddings.tok_embeddings.weight


@pytest.mark.parametrize("preset, total, non_embedding, hidden, heads", [
    ("small", 140.9e6, 42.2e6, 384, 6),   # mmBERT-small: 140M parameters, 42M outside the embeddings
    ("base", 307.8e6, 110.3e6, 768, 12),  # mmBERT-base: 307M, 110M
])
def test_presets_have_mmbert_sizes(preset, total, non_embedding, hidden, heads):
    cfg = model_config(preset, TokenizerSpec(256_000, 0, 2, 1, 4))  # Gemma 2's vocabulary
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (22, hidden, 1152, heads)
    assert cfg.layer_types[:6] == ["full_attention", "sliding_attention", "sliding_attention"] * 2
    assert cfg.local_attention == 128 and cfg.rope_parameters["sliding_attention"]["rope_theta"] == 160_000.0
    with torch.device("meta"):  # counted without allocating
        m = ModernBertForMaskedLM(cfg)
    assert parameter_count(m) == pytest.approx(total, rel=2e-3)
    assert parameter_count(m.model.layers) == pytest.approx(non_embedding, rel=2e-3)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        model_config("huge", TOK)
    with pytest.raises(ValueError, match="mask_id=600 is outside the vocabulary of 500"):
        model_config("tiny", TokenizerSpec(500, 0, 2, 3, 600))
    with pytest.raises(ValueError, match="flash_attention_2' needs a CUDA device"):
        build_model("tiny", TOK, attn="flash_attention_2")
    assert set(PRESETS) == {"tiny", "small", "base"}
