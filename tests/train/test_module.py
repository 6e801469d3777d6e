"""KiwiLM pieces that need no full run: optimizer groups, schedules, compile and checkpointing hooks."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.helpers import compose


@pytest.fixture
def module(tmp_path, kiwi_cache):
    from kiwi.model.build import as_dict
    from kiwi.train.module import KiwiLM

    def make(overrides=(), **kwargs):
        cfg = compose("train", ["experiment=quickstart", *overrides], output_dir=tmp_path)
        return KiwiLM(as_dict(cfg.model), as_dict(cfg.optimizer), as_dict(cfg.scheduler),
                      cache_dir=str(kiwi_cache), warmup_steps=2, total_steps=10, **kwargs)

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



# --- training steps with a real in-process Trainer on hand-made packed batches -----------------------------

SEQ = 48


def _batches(vocab: int, label_counts: list[int], accumulate: int, seed: int = 0) -> list[dict]:
    """One packed row per micro-batch with the given number of label tokens (the rest is masked padding),
    each tagged with the label tokens of its optimizer step, as the datamodule does."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in label_counts:
        ids = torch.randint(0, vocab, (1, SEQ), generator=g)
        labels = ids.clone()
        labels[:, 0] = -100  # a segment start
        labels[:, n + 1:] = -100
        rows.append({"input_ids": ids, "labels": labels, "position_ids": torch.arange(SEQ)[None]})
    for start in range(0, len(rows), accumulate):
        group = rows[start:start + accumulate]
        total = sum(int((r["labels"] != -100).sum()) for r in group)
        for r in group:
            r["group_label_tokens"] = torch.tensor(total)
    return rows


def _loader(batches: list[dict]):
    from torch.utils.data import DataLoader

    return DataLoader(batches, batch_size=None)  # each item is already a batch


def _trainer(steps: int, accumulate: int = 1, callbacks=(), clip=None) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, accumulate_grad_batches=accumulate,
                     gradient_clip_val=clip, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks))


class _Grads(L.Callback):
    """The gradient the optimizer is about to apply (after accumulation, before clipping)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


class _WeightsPerStep(L.Callback):
    """The weights at the start of every optimizer step."""

    def __init__(self):
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self.at[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_accumulated_micro_batches_weigh_every_token_like_one_batch(module):
    """2 micro-batches with 40 and 9 label tokens, accumulated, give the gradient (and logged loss) of
    the same 2 rows as one batch: the loss is normalised by the step's tokens, not per micro-batch."""
    lm = module()
    init = {k: v.clone() for k, v in lm.state_dict().items()}
    micro = _batches(lm.model.config.vocab_size, [40, 9], accumulate=2)
    acc = _Grads()
    _trainer(1, accumulate=2, callbacks=[acc]).fit(lm, train_dataloaders=_loader(micro))
    acc_loss = float(lm.trainer.callback_metrics["train/loss"])

    union = {k: torch.cat([b[k] for b in micro]) for k in ("input_ids", "labels", "position_ids")}
    lm2 = module()
    lm2.load_state_dict(init)
    one = _Grads()
    _trainer(1, callbacks=[one]).fit(lm2, train_dataloaders=_loader([union]))  # no key: its own 49 tokens
    assert acc.grads.keys() == one.grads.keys()
    diff = sum((acc.grads[k] - one.grads[k]).double().norm() ** 2 for k in one.grads) ** 0.5
    ref = sum(one.grads[k].double().norm() ** 2 for k in one.grads) ** 0.5
    assert diff / ref < 1e-5, f"relative gradient difference {diff / ref:.3g}"
    assert acc_loss == pytest.approx(float(lm2.trainer.callback_metrics["train/loss"]), rel=1e-6)
    assert float(lm.trainer.callback_metrics["train/tokens_in_step"]) == 49


def test_accumulation_without_step_token_counts_is_a_clear_error(module):
    from kiwi.errors import ConfigError

    lm = module()
    micro = [{k: v for k, v in b.items() if k != "group_label_tokens"}
             for b in _batches(lm.model.config.vocab_size, [40, 9], accumulate=2)]
    with pytest.raises(ConfigError, match="group_label_tokens"):
        _trainer(1, accumulate=2).fit(lm, train_dataloaders=_loader(micro))


def _poisoned_run(module, callback, mode: str, steps: int = 3, accumulate: int = 2):
    lm = module(nonfinite_loss=mode)
    weights = _WeightsPerStep()
    batches = _batches(lm.model.config.vocab_size, [30, 12] * steps, accumulate=accumulate)
    trainer = _trainer(steps, accumulate=accumulate, callbacks=[weights, callback], clip=1.0)
    return lm, weights, trainer, batches


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_nonfinite_step_skip_leaves_weights_and_optimizer_untouched(module, poison):
    """A NaN loss in one micro-batch, or a finite loss with an inf gradient: with `skip` that whole step
    changes nothing (weights, AdamW moments and step count), the steps around it do, all stays finite."""
    from tests.train.callbacks_for_tests import InfGradAtStep, PoisonLossAtStep

    bad = PoisonLossAtStep(step=1) if poison == "loss" else InfGradAtStep(step=1)
    lm, weights, trainer, batches = _poisoned_run(module, bad, "skip")
    trainer.fit(lm, train_dataloaders=_loader(batches))
    final = {n: p.detach().clone() for n, p in lm.named_parameters()}
    assert trainer.global_step == 3 and lm.skipped_steps == 1
    assert _same(weights.at[1], weights.at[2]), "the poisoned step changed weights"
    assert not _same(weights.at[0], weights.at[1]) and not _same(weights.at[2], final)
    assert all(torch.isfinite(p).all() for p in final.values())
    opt = trainer.optimizers[0]
    assert {int(opt.state[p]["step"]) for g in opt.param_groups for p in g["params"]} == {2}
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the schedule follows the global step


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_nonfinite_step_stop_raises_before_the_update(module, poison):
    from kiwi.errors import KiwiError
    from kiwi.train.module import NonFiniteLossError
    from tests.train.callbacks_for_tests import InfGradAtStep, PoisonLossAtStep

    bad = PoisonLossAtStep(step=1) if poison == "loss" else InfGradAtStep(step=1)
    lm, weights, trainer, batches = _poisoned_run(module, bad, "stop")
    what = "training loss" if poison == "loss" else "gradient norm"
    with pytest.raises(NonFiniteLossError, match=rf"non-finite {what}.*rank\(s\) \[0\] at global step 1") as err:
        trainer.fit(lm, train_dataloaders=_loader(batches))
    assert isinstance(err.value, KiwiError)
    assert _same(weights.at[1], {n: p.detach() for n, p in lm.named_parameters()})
