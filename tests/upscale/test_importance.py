"""Layer importance via hooks, checked against output_hidden_states."""

from __future__ import annotations

import math

import pytest
import torch

from kiwi.upscale import make_plan
from kiwi.upscale.importance import layer_scores, layer_similarity, measure_layers


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 300, (2, 12), generator=g) for _ in range(2)]


def _reference(model, batches):
    """Straightforward scores: layer i maps hidden_states[i] -> hidden_states[i + 1]; the last layer's
    output is captured by a hook because hidden_states[-1] is after the final norm."""
    n = model.config.num_hidden_layers
    last = {}
    handle = model.model.layers[-1].register_forward_hook(
        lambda m, a, o: last.__setitem__("out", o[0] if isinstance(o, tuple) else o)
    )
    cos_all = [[] for _ in range(n)]
    with torch.no_grad():
        for ids in batches:
            hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states
            for i in range(n):
                out = hs[i + 1] if i < n - 1 else last["out"]
                cos_all[i].append(torch.nn.functional.cosine_similarity(hs[i], out, dim=-1).flatten())
    handle.remove()
    cos = [torch.cat(c).double() for c in cos_all]
    bi = [1.0 - float(c.mean()) for c in cos]
    ang = [float((torch.arccos(c.clamp(-1, 1)) / math.pi).mean()) for c in cos]
    return bi, ang, hs, out


def test_scores_match_hidden_states(model6):
    batches = _batches()
    bi_ref, ang_ref, hs, last_out = _reference(model6, batches)
    # hidden_states[-1] is the final-norm output, not the last layer's output: it must not be used
    torch.testing.assert_close(hs[-1], model6.model.norm(last_out))
    assert not torch.allclose(hs[-1], last_out)
    assert layer_scores(model6, batches, metric="block_influence") == pytest.approx(bi_ref, abs=1e-6)
    assert layer_scores(model6, batches, metric="angular") == pytest.approx(ang_ref, abs=1e-6)


def test_similarity_matrix(model6):
    m = measure_layers(model6, _batches())
    sim = torch.tensor(m.similarity_cosine)
    assert sim.shape == (6, 6) and m.n_tokens == 48
    torch.testing.assert_close(sim, sim.T)
    torch.testing.assert_close(torch.diagonal(sim), torch.ones(6, dtype=sim.dtype), atol=1e-5, rtol=0)
    ang = torch.tensor(layer_similarity(model6, _batches(), metric="angular"))
    assert ((ang >= 0) & (ang <= 1)).all() and torch.diagonal(ang).abs().max() < 1e-2


def test_padding_is_ignored(model6):
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    plain = layer_scores(model6, [ids])
    masked = layer_scores(model6, [{"input_ids": padded, "attention_mask": mask}])
    assert masked == pytest.approx(plain, abs=1e-5)


def test_direction_changes_plan(model6):
    scores = layer_scores(model6, _batches())
    most = make_plan("importance", 6, 8, scores=scores, direction="most")
    least = make_plan("importance", 6, 8, scores=scores, direction="least")
    assert most.sources != least.sources
    top2 = sorted(range(6), key=lambda i: -scores[i])[:2]
    assert sorted({most.sources[j] for j in most.new_layers}) == sorted(top2)


def test_bad_metric_and_batches(model6):
    with pytest.raises(ValueError, match="metric"):
        layer_scores(model6, _batches(), metric="cka")
    with pytest.raises(ValueError, match="input_ids"):
        layer_scores(model6, [{"ids": torch.zeros(1, 3, dtype=torch.long)}])
    with pytest.raises(ValueError, match="no tokens"):
        layer_scores(model6, [])
