"""The continued-pretraining levers (kiwi.train.levers) on a real tiny up-scaled Qwen2: which parameters a
lower copied-layer lr reaches, and a real Lightning fit in which phase 1 updates only the new layers."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from kiwi.study.jobs import variant_label
from kiwi.train.levers import TwoPhase, new_layer_params, split_copied
from kiwi.upscale import make_plan, upscale
from tests.helpers import tiny_qwen2


@pytest.fixture
def grown():
    plan = make_plan("interleave", 3, 5, identity_init=True)
    return upscale(tiny_qwen2(num_hidden_layers=3), plan), plan


def test_split_copied_gives_the_copied_weights_the_scaled_lr(grown):
    model, plan = grown
    params = list(model.parameters())
    groups = split_copied([{"params": params[::2]}, {"params": params[1::2], "weight_decay": 0.0}], model, plan,
                          lr=1e-3, scale=0.1)
    new = {id(p) for j in plan.new_layers for p in model.model.layers[j].parameters()}
    assert new == new_layer_params(model, plan) and len(plan.new_layers) == 2
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in params)  # every parameter exactly once
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= new or not ids & new  # a group is all new or all copied
        assert g["lr"] == pytest.approx(1e-3 if ids <= new else 1e-4)
    assert [g.get("weight_decay") for g in groups] == [None, None, 0.0, 0.0]
    # embeddings (tied lm_head) and the final norm come from the base: the copied lr
    emb = model.model.embed_tokens.weight
    assert next(g for g in groups if any(p is emb for p in g["params"]))["lr"] == pytest.approx(1e-4)


def test_levers_refuse_a_model_without_new_layers_and_bad_values(grown):
    model = tiny_qwen2(num_hidden_layers=3)
    with pytest.raises(ValueError, match="no new layers"):
        split_copied([{"params": list(model.parameters())}], model, make_plan("none", 3), 1e-3, 0.1)
    with pytest.raises(ValueError, match="copied_lr_scale"):
        split_copied([{"params": list(grown[0].parameters())}], *grown, 1e-3, 0.0)
    with pytest.raises(ValueError, match="new_only_fraction"):
        TwoPhase(1.0)


class _Grown(L.LightningModule):
    """The smallest module TwoPhase works with: an up-scaled HF model and its plan, plain AdamW."""

    def __init__(self, model, plan):
        super().__init__()
        self.model, self.plan = model, plan

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2)


class _Snapshots(L.Callback):
    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.after_step.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


def test_two_phase_updates_only_the_new_layers_first(grown):
    model, plan = grown
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    new_names = {n for n, p in model.named_parameters() if id(p) in new_layer_params(model, plan)}
    snaps = _Snapshots()
    data = torch.utils.data.DataLoader(torch.randint(0, 256, (8, 16)), batch_size=2)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TwoPhase(0.5), snaps])
    trainer.fit(_Grown(model, plan), data)
    assert TwoPhase(0.5).phase1_steps(4) == 2 and len(snaps.after_step) == 4
    for step, snap in enumerate(snaps.after_step):
        copied_moved = [n for n in snap if n not in new_names and not torch.equal(snap[n], start[n])]
        new_moved = [n for n in new_names if not torch.equal(snap[n], start[n])]
        assert new_moved, step
        assert (copied_moved == []) == (step < 2), (step, copied_moved[:3])


def test_variant_names_carry_the_levers():
    assert variant_label("interleave", True, "all", False) == "interleave_id"
    assert variant_label("interleave", True, "all", False, two_phase=0.5) == "interleave_id_2phase"
    assert variant_label("interleave", True, "all", False, copied_lr_scale=0.1) == "interleave_id_lrcopy"
    assert variant_label("interleave", True, "all", False, 0.25, 0.3) == "interleave_id_2phase0.25_lrcopy0.3"
    assert variant_label("none", False, "all", True, copied_lr_scale=0.1) == "control_flops"
