"""KiwiLM pieces that need no full run: optimizer groups, schedules, compile and checkpointing hooks."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import compose


@pytest.fixture
def module(tmp_path, kiwi_cache):
    from kiwi.model.build import as_dict
    from kiwi.train.module import KiwiLM

    def make(overrides=()):
        cfg = compose("train", ["experiment=quickstart", *overrides], output_dir=tmp_path)
        return KiwiLM(as_dict(cfg.model), as_dict(cfg.optimizer), as_dict(cfg.scheduler),
                      cache_dir=str(kiwi_cache), warmup_steps=2, total_steps=10)

    return make


def test_compile_option_compiles_each_decoder_layer(module):
    lm = module(["model.compile=true", "model.activation_checkpointing=mlp"])
    lm.configure_model()
    assert all(layer._compiled_call_impl is not None for layer in lm.model.model.layers)
    names = {n for n, _ in lm.model.named_parameters()}
    assert "model.layers.0.mlp.down_proj.weight" in names  # checkpoint keys are unchanged


def test_weight_decay_groups_and_schedule(module):
    lm = module()
    opt_conf = lm.configure_optimizers()
    opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    decay, no_decay = opt.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] > 0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    n_trainable = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_trainable
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[2] and lrs[-1] < lrs[3]  # warmup, then cosine decay


def test_trainable_new_freezes_all_but_the_copies(module):
    lm = module(["model.layer_selection=llama_pro"])
    trainable = {n.split(".")[2] for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable == {str(j) for j in lm.plan.new_layers}
    opt = lm.configure_optimizers()["optimizer"]
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])


def test_identity_init_starts_at_the_base_function(module):
    from transformers import AutoModelForCausalLM

    lm = module(["model.layer_selection.identity_init=true"])
    base = AutoModelForCausalLM.from_pretrained(lm.model.config.kiwi_base_model)
    ids = torch.randint(0, base.config.vocab_size, (2, 64))
    with torch.no_grad():
        assert torch.allclose(lm.model(ids, use_cache=False).logits, base(ids, use_cache=False).logits, atol=1e-5)

