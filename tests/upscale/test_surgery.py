"""Model surgery on real tiny Qwen2 models: function preservation, KV cache, save/load, ties."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kiwi.upscale import LayerPlan, apply_trainable, count_parameters, make_plan, upscale

IDENTITY_PLANS = {
    "interleave": dict(strategy="interleave", n_target=10),
    "solar": dict(strategy="solar", n_target=10),
    "stack": dict(strategy="stack", n_target=10),
    "llama_pro": dict(strategy="llama_pro", n_target=9),
    "explicit": dict(strategy="explicit", layers=[0, 1, 1, 2, 3, 4, 4, 5, 5]),
    "importance": dict(strategy="importance", n_target=9, scores=[0.3, 0.1, 0.5, 0.2, 0.9, 0.4]),
    "none": dict(strategy="none"),
}


def _plan(n_source: int, spec: dict, **extra) -> LayerPlan:
    spec = dict(spec)
    return make_plan(spec.pop("strategy"), n_source, spec.pop("n_target", None), **spec, **extra)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(IDENTITY_PLANS))
def test_identity_init_preserves_function(model6, name):
    plan = _plan(6, IDENTITY_PLANS[name], identity_init=True)
    assert plan.preserves_function
    big = upscale(model6, plan)
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 16))
    packed = torch.cat([torch.arange(10), torch.arange(6)]).unsqueeze(0)  # two documents in one row
    with torch.no_grad():
        for kwargs in ({}, {"position_ids": packed.expand(2, -1)}):
            base = model6(ids, use_cache=False, **kwargs).logits
            new = big(ids, use_cache=False, **kwargs).logits
            torch.testing.assert_close(new, base, rtol=1e-5, atol=1e-5)


def test_copies_without_identity_change_function(model6):
    big = upscale(model6, make_plan("interleave", 6, 8))
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(big(ids).logits, model6(ids).logits, atol=1e-4)


def test_layers_are_copies_with_own_index_and_config(model6):
    plan = make_plan("interleave", 6, 9, identity_init=True)
    big = upscale(model6, plan)
    layers = big.model.layers
    assert len(layers) == 9 and big.config.num_hidden_layers == 9
    assert len(big.config.layer_types) == 9
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(9))
    for j, s in enumerate(plan.sources):
        src = model6.model.layers[s]
        torch.testing.assert_close(layers[j].self_attn.q_proj.weight, src.self_attn.q_proj.weight)
        torch.testing.assert_close(layers[j].mlp.up_proj.weight, src.mlp.up_proj.weight)
        zeroed = plan.identity_init[j]
        assert bool((layers[j].self_attn.o_proj.weight == 0).all()) == zeroed
        assert bool((layers[j].mlp.down_proj.weight == 0).all()) == zeroed
        assert layers[j].self_attn.o_proj.bias is None  # Qwen2 o_proj has no bias
    assert big.config.kiwi_layer_plan == plan.to_dict()
    assert LayerPlan.from_dict(big.config.kiwi_layer_plan) == plan


def test_no_shared_storage_and_tied_embeddings(model6):
    big = upscale(model6, make_plan("stack", 6, 12))
    assert big.lm_head.weight is big.model.embed_tokens.weight
    src_ptrs = {p.data_ptr() for p in model6.parameters()}
    seen = set()
    for name, p in big.named_parameters():  # deduplicated: the tied lm_head appears once
        assert p.data_ptr() not in src_ptrs, f"{name} shares memory with the source"
        assert p.data_ptr() not in seen, f"{name} shares memory with another tensor"
        seen.add(p.data_ptr())
    assert not any(p.is_meta for p in big.parameters())
    torch.testing.assert_close(big.model.rotary_emb.inv_freq, model6.model.rotary_emb.inv_freq)


def test_untied_source_stays_untied(make_tiny_model):
    model = make_tiny_model(4, tie=False, seed=3)
    big = upscale(model, make_plan("interleave", 4, 6))
    assert big.lm_head.weight is not big.model.embed_tokens.weight
    torch.testing.assert_close(big.lm_head.weight, model.lm_head.weight)
    assert count_parameters(big) == count_parameters(model.config, n_layers=6)


def test_source_untouched_after_upscale_and_training_step(model6):
    before = _state(model6)
    big = upscale(model6, make_plan("llama_pro", 6, 8))
    apply_trainable(big, make_plan("llama_pro", 6, 8))
    big.train()
    ids = torch.randint(0, 300, (2, 8))
    opt = torch.optim.SGD([p for p in big.parameters() if p.requires_grad], lr=1.0)
    big(ids, labels=ids).loss.backward()
    opt.step()
    after = model6.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert len(model6.model.layers) == 6 and model6.config.num_hidden_layers == 6
    assert not hasattr(model6.config, "kiwi_layer_plan")


def test_save_load_round_trip_bit_exact(model6, tmp_path):
    plan = make_plan("solar", 6, 10, identity_init=True)
    big = upscale(model6, plan)
    big.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("model.layers.9.") for k in tensors)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert loaded.config.num_hidden_layers == 10
    assert LayerPlan.from_dict(loaded.config.kiwi_layer_plan) == plan
    a, b = big.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert torch.equal(big(ids).logits, loaded(ids).logits)


def _greedy_no_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    out = ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(out, use_cache=False).logits[:, -1]
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out


@pytest.mark.parametrize("strategy", ["interleave", "stack"])
def test_generate_with_kv_cache_matches_no_cache(strategy, make_tiny_model):
    model = make_tiny_model(4, seed=7, initializer_range=0.3)
    big = upscale(model, make_plan(strategy, 4, 7))  # plain copies: every layer matters
    ids = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(0))
    steps = 12
    cached = big.generate(ids, max_new_tokens=steps, do_sample=False, use_cache=True,
                          attention_mask=torch.ones_like(ids), pad_token_id=0)
    reference = _greedy_no_cache(big, ids, steps)
    assert torch.equal(cached, reference)
    assert len(set(cached[0, 6:].tolist())) > 1  # the check is not vacuous


def test_dtype_is_kept(make_tiny_model):
    model = make_tiny_model(4, seed=5).to(torch.bfloat16)
    big = upscale(model, make_plan("interleave", 4, 6, identity_init=True))
    assert {p.dtype for p in big.parameters()} == {torch.bfloat16}
    assert big.model.rotary_emb.inv_freq.dtype == model.model.rotary_emb.inv_freq.dtype
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(big(ids).logits, model(ids).logits)


def test_apply_trainable(model6):
    plan = make_plan("interleave", 6, 9)
    big = upscale(model6, plan)
    assert apply_trainable(big, plan, "all") == count_parameters(big)
    n_new = apply_trainable(big, plan, "new")
    per_layer = sum(p.numel() for p in big.model.layers[0].parameters())
    assert n_new == len(plan.new_layers) * per_layer
    assert not big.model.embed_tokens.weight.requires_grad and not big.model.norm.weight.requires_grad
    for j, layer in enumerate(big.model.layers):
        assert all(p.requires_grad == (j in plan.new_layers) for p in layer.parameters())
    with pytest.raises(ValueError, match="trainable"):
        apply_trainable(big, plan, "some")
    with pytest.raises(ValueError, match="n_target"):
        apply_trainable(model6, plan)


def test_plan_model_mismatch_is_an_error(model6):
    with pytest.raises(ValueError, match="source layers"):
        upscale(model6, make_plan("interleave", 8, 10))


def test_24_to_38_upscale_of_tiny_24_layer_model(model24):
    for strategy in ("interleave", "solar", "stack", "llama_pro"):
        plan = make_plan(strategy, 24, 38, identity_init=True)
        big = upscale(model24, plan)
        assert len(big.model.layers) == 38
        ids = torch.randint(0, 300, (1, 10))
        with torch.no_grad():
            torch.testing.assert_close(big(ids).logits, model24(ids).logits, rtol=1e-5, atol=1e-5)


def test_consume_source_moves_first_copies_and_matches_copy_mode():
    """build_model's fast path: same model as a full copy, only the duplicates are new memory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kiwi.upscale import make_plan, upscale

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=6, vocab_size=300, tie_word_embeddings=True)
    plan = make_plan("interleave", 6, 10, identity_init=True)
    copied = upscale(Qwen2ForCausalLM(cfg).eval(), plan)
    torch.manual_seed(0)
    source = Qwen2ForCausalLM(cfg).eval()
    moved = upscale(source, plan, consume_source=True)
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        assert torch.equal(copied(ids, use_cache=False).logits, moved(ids, use_cache=False).logits)
    ptrs = [p.data_ptr() for p in moved.parameters()]
    assert len(ptrs) == len(set(ptrs))  # no tensor shared inside the new model (safetensors-safe)
    src_ptrs = {p.data_ptr() for p in source.parameters()}
    first = {plan.sources.index(s) for s in set(plan.sources)}
    for j, layer in enumerate(moved.model.layers):
        shares = layer.mlp.up_proj.weight.data_ptr() in src_ptrs
        assert shares == (j in first), f"layer {j}"
    assert moved.lm_head.weight is moved.model.embed_tokens.weight


def test_removing_skipped_layers_keeps_the_function_per_layer_fields_and_kv_cache(make_tiny_model, tmp_path):
    """A model whose layers 2 and 5 return their input (grow_in_steps before they join) computes the same
    with them removed, sliding-window layer types and KV-cache slots included, and saves as a plain model."""
    from kiwi.upscale import remove_layers

    model = make_tiny_model(4, seed=3, initializer_range=0.3, use_sliding_window=True, sliding_window=4,
                            max_window_layers=2)
    plan = make_plan("interleave", 4, 7)  # plain copies: every layer matters
    skipping = upscale(model, plan)
    removed = upscale(model, plan)
    types = list(skipping.config.layer_types)
    for j in (2, 5):
        skipping.model.layers[j].forward = lambda hidden_states, *args, **kwargs: hidden_states
    kept = remove_layers(removed, plan, [5, 2])
    assert kept.sources == tuple(plan.sources[j] for j in (0, 1, 3, 4, 6)) and kept.options["not_joined"] == [2, 5]
    assert removed.config.num_hidden_layers == 5 and removed.config.layer_types == [types[j] for j in (0, 1, 3, 4, 6)]
    assert [layer.self_attn.layer_idx for layer in removed.model.layers] == list(range(5))
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(removed(ids).logits, skipping(ids).logits)
        assert not torch.allclose(removed(ids).logits, upscale(model, plan)(ids).logits, atol=1e-3)
    removed.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert LayerPlan.from_dict(again.config.kiwi_layer_plan) == kept
    cached = again.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True,
                            attention_mask=torch.ones_like(ids), pad_token_id=0)
    assert torch.equal(cached, _greedy_no_cache(skipping, ids, 8))
    with pytest.raises(ValueError, match="remove_layers: slots"):
        remove_layers(again, kept, [9])
