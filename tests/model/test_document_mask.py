"""``data.document_mask=false``: a packed row is one causal sequence. Cross-document attention really
attends (logits change from the masked row, and equal HF's own run on the concatenated row), and the labels
are masked exactly where the masked row masks them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiwi.data.packing import IGNORE_INDEX, pack_documents
from kiwi.model.loss import backbone_hidden, lm_nll, shift_labels
from tests.helpers import tiny_qwen2

EOS = 0
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _docs(lengths, vocab=256, seed=1):
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(1, vocab, n - 1), EOS).astype(np.int64) for n in lengths]


def _rows(lengths, seq_len, document_mask):
    return [row for row, _, _ in pack_documents(_docs(lengths), seq_len, EOS, document_mask=document_mask)]


def _t(row):
    return {k: torch.from_numpy(v).unsqueeze(0) for k, v in row.items()}


def test_unmasked_rows_run_positions_straight_through_and_keep_the_labels():
    # 3 documents in row 0, the third split into row 1; the last row padded
    masked, unmasked = _rows([9, 5, 14], 24, True), _rows([9, 5, 14], 24, False)
    assert len(masked) == len(unmasked) == 2
    for m, u in zip(masked, unmasked, strict=True):
        assert np.array_equal(m["input_ids"], u["input_ids"])
        assert np.array_equal(u["position_ids"], np.arange(24))
        assert np.array_equal(m["labels"], u["labels"])  # the same tokens are scored either way
    # -100 exactly at each segment start (0, 9, 14 in row 0; 0 in row 1) and on row 1's padding (4 tokens from 4)
    ignored = [np.flatnonzero(r["labels"] == IGNORE_INDEX).tolist() for r in unmasked]
    assert ignored == [[0, 9, 14], [0, *range(4, 24)]]
    assert masked[0]["position_ids"].tolist() == [*range(9), *range(5), *range(10)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cross_document_attention_attends_on_cpu(attn):
    _check_cross_document_attention(tiny_qwen2(attn), "cpu", tol=1e-5)


@pytest.mark.gpu
@cuda
def test_cross_document_attention_attends_with_flex_on_cuda():
    _check_cross_document_attention(tiny_qwen2("flex_attention").cuda(), "cuda", tol=1e-4)


def _check_cross_document_attention(model, device, tol):
    lengths = [9, 5, 10]  # fills one 24-token row exactly
    (masked,), (unmasked,) = _rows(lengths, 24, True), _rows(lengths, 24, False)
    m, u = {k: v.to(device) for k, v in _t(masked).items()}, {k: v.to(device) for k, v in _t(unmasked).items()}
    with torch.no_grad():
        # the training forward (kiwi.model.loss.backbone_hidden: attention_mask=None, use_cache=False)
        h_masked = backbone_hidden(model, m["input_ids"], m["position_ids"])
        h_cross = backbone_hidden(model, u["input_ids"], u["position_ids"])
        logits_masked, logits_cross = model.lm_head(h_masked)[0], model.lm_head(h_cross)[0]
        # the unmasked reference: HF's own plain causal run on the concatenated row
        ref = model(input_ids=u["input_ids"], use_cache=False).logits[0]
    torch.testing.assert_close(logits_cross, ref, atol=tol, rtol=tol)
    # the first document sees nothing before it either way; every later one now sees the earlier ones
    torch.testing.assert_close(logits_cross[:9], logits_masked[:9], atol=tol, rtol=tol)
    for start, end in ((9, 14), (14, 24)):
        assert (logits_cross[start:end] - logits_masked[start:end]).abs().amax(-1).min() > 1e-3
    # the loss: the row's scored tokens, read off the reference logits
    with torch.no_grad():
        nll, n = lm_nll(model, u["input_ids"], u["labels"], u["position_ids"], impl="chunked")
    targets = shift_labels(u["labels"])[0]
    keep = targets != IGNORE_INDEX
    expect = -torch.log_softmax(ref.double(), -1)[keep, targets[keep]].sum()
    assert int(n) == 24 - 3 == int(keep.sum())  # 3 segment starts: nothing predicted across a boundary
    assert float(nll) == pytest.approx(float(expect), rel=1e-4)
