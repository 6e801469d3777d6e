"""The continued-pretraining levers (kiwi.train.levers) on a real tiny up-scaled Qwen2: which parameters a
lower copied-layer lr reaches, real Lightning fits in which phase 1 updates only the new layers and in which
the model grows in two steps (with an exact resume across the growth), and each lever's FLOPs."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from kiwi.cli import lever_suffix
from kiwi.errors import ConfigError
from kiwi.train.budget import forward_flops, teacher_matched_tokens, training_flops
from kiwi.train.levers import GrowInSteps, TwoPhase, distill_settings, new_layer_params, run_flops, split_copied
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
    assert lever_suffix({}) == ""
    assert lever_suffix({"callbacks": {"two_phase": {"new_only_fraction": 0.5}}}) == "_2phase"
    assert lever_suffix({"optimizer": {"copied_lr_scale": 0.1}}) == "_lrcopy"
    assert lever_suffix({"callbacks": {"two_phase": {"new_only_fraction": 0.25}},
                         "optimizer": {"copied_lr_scale": 0.3}}) == "_2phase0.25_lrcopy0.3"
    assert lever_suffix({"module": {"distill": {"alpha": 0.5}}}) == "_distill"
    assert lever_suffix({"module": {"distill": {"alpha": 0.2}}}) == "_distill0.2"
    assert lever_suffix({"module": {"distill": {"alpha": 0.5, "temperature": 4.0}}}) == "_distillT4"
    assert lever_suffix({"module": {"distill": {"flops_matched": False}}}) == "_distill_unmatched"
    assert lever_suffix({"module": {"distill": {"flops_matched": None}}}) == "_distill"  # null = the default
    assert lever_suffix({"module": {"distill": True}}) == "_distill"
    assert lever_suffix({"module": {"distill": None}}) == ""
    assert lever_suffix({"callbacks": {"grow_in_steps": {"stages": 3}}}) == "_grow3"
    constant = {"scheduler": {"_target_": "kiwi.train.schedule.warmup_constant"}}
    assert lever_suffix({**constant, "budget": {"warmup_fraction": 0.0}}) == "_norewarm"
    assert lever_suffix({**constant, "budget": {"warmup_fraction": 0.1}}) == ""  # a re-warm to a constant lr


def test_distill_settings_are_checked():
    defaults = {"alpha": 0.5, "temperature": 1.0, "flops_matched": True}
    assert distill_settings(None) is None and distill_settings(False) is None
    assert distill_settings(True) == distill_settings({}) == defaults  # on, with the defaults
    assert distill_settings({"alpha": 0.3}) == {**defaults, "alpha": 0.3}
    for bad, match in (({"alpha": 0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"temperature": -1}, "temperature"),
                       ({"alfa": 0.5}, "unknown option"), ({"alpha": "abc"}, r"distill.alpha: expected a number"),
                       ({"flops_matched": "no"}, "flops_matched: expected true or false"),
                       (5, "expected null, true or a mapping")):
        with pytest.raises(ConfigError, match=match):
            distill_settings(bad)


def _cfg(layers: int):
    return tiny_qwen2(num_hidden_layers=layers).config


def test_distillation_counts_the_teacher_and_matches_the_plain_variant_flops():
    student, teacher, seq = _cfg(5), _cfg(3), 64
    plain = training_flops(student, 4096, seq)
    total, teacher_part = run_flops([], student, make_plan("interleave", 3, 5), teacher, 32, 32, 128, seq)
    assert teacher_part > 0 and teacher_part == pytest.approx(forward_flops(teacher, 4096, seq))
    assert teacher_part == pytest.approx(training_flops(teacher, 4096, seq) / 3)
    assert total == pytest.approx(plain + teacher_part)  # the teacher's forwards are part of the run's FLOPs
    # flops_matched: fewer tokens, so that student + teacher cost what the plain variant costs
    matched = teacher_matched_tokens(4096, student, teacher, seq)
    assert matched < 4096
    both = training_flops(student, matched, seq) + forward_flops(teacher, matched, seq)
    assert both == pytest.approx(plain, rel=1e-3)


def test_grow_in_steps_flops_count_each_stage_at_its_depth(grown):
    _, plan = grown
    config, seq = _cfg(5), 64
    grow = GrowInSteps(2)
    assert grow.groups(plan) == [[plan.new_layers[0]], [plan.new_layers[1]]]
    total, teacher = run_flops([grow], config, plan, None, 10, 10, 128, seq)
    want = training_flops(_cfg(4), 5 * 128, seq) + training_flops(_cfg(5), 5 * 128, seq)
    assert teacher == 0 and total == pytest.approx(want)
    assert total < training_flops(config, 10 * 128, seq)  # fewer FLOPs than growing once
    # an interrupted run (3 of 10 steps) counts only the steps it ran, all at the first stage's depth
    assert run_flops([grow], config, plan, None, 3, 10, 128, seq)[0] == pytest.approx(
        training_flops(_cfg(4), 3 * 128, seq))
    with pytest.raises(ConfigError, match="only 2 new layer"):
        GrowInSteps(3).groups(plan)
    with pytest.raises(ValueError, match="stages"):
        GrowInSteps(1)


def _fit_growing(model, plan, steps: int, ckpt_dir=None, resume=None, snaps=None):
    # every batch the same: a resumed run restarts this plain DataLoader, and must still see the same data
    rows = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0)).repeat(steps, 1)
    data = torch.utils.data.DataLoader(rows, batch_size=2)
    callbacks = [GrowInSteps(2), *(snaps or [])]
    if ckpt_dir:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=bool(ckpt_dir),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    module = _Grown(model, plan)
    trainer.fit(module, data, ckpt_path=resume)
    return module


class _AtGrowth(L.Callback):
    """The late layer and its original as the growth step's batch starts (after GrowInSteps ran)."""

    def __init__(self, late: int, original: int, step: int):
        self.late, self.original, self.step, self.seen = late, original, step, None

    def on_train_batch_start(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            layers = pl_module.model.model.layers
            self.seen = [{n: p.detach().clone() for n, p in layers[j].named_parameters()}
                         for j in (self.late, self.original)]


def test_grow_in_steps_skips_the_late_layer_then_copies_it_from_its_trained_original(grown):
    model, plan = grown
    late, original = plan.new_layers[1], plan.sources.index(plan.sources[plan.new_layers[1]])
    start = {n: p.detach().clone() for n, p in model.model.layers[late].named_parameters()}
    snaps, at_growth = _Snapshots(), _AtGrowth(late, original, step=2)
    _fit_growing(model, plan, 4, snaps=[at_growth, snaps])
    prefix = f"model.layers.{late}."
    joined, orig = at_growth.seen
    for step, snap in enumerate(snaps.after_step):
        late_now = {n[len(prefix):]: t for n, t in snap.items() if n.startswith(prefix)}
        # skipped for the first 2 of 4 steps: untouched after step 1; joined (copied) at the end of step 2
        moved = [n for n in late_now if not torch.equal(late_now[n], start[n] if step < 1 else joined[n])]
        assert (moved == []) == (step < 2), (step, moved[:3])
    # when it joined it held its original's weights after 2 steps of training (not the base's), with its
    # residual branch zeroed again (identity_init): a no-op at the moment it joins
    assert not torch.equal(orig["mlp.gate_proj.weight"], start["mlp.gate_proj.weight"])
    for name, tensor in joined.items():
        zeroed = name.startswith(("self_attn.o_proj", "mlp.down_proj"))
        torch.testing.assert_close(tensor, torch.zeros_like(tensor) if zeroed else orig[name], rtol=0, atol=0)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)  # every layer joined


def test_grow_in_steps_resumes_a_first_format_checkpoint_without_copying_again(grown, tmp_path):
    """Checkpoints of the first GrowInSteps kept {"grown": [stages]}: resuming one after the growth must not
    copy the trained late layer over again."""
    model, plan = grown
    fresh = copy.deepcopy(model)
    straight = _fit_growing(model, plan, 4)
    _fit_growing(copy.deepcopy(fresh), plan, 4, ckpt_dir=tmp_path)
    ckpt = torch.load(next(tmp_path.glob("*step=3.ckpt")), weights_only=False)
    key = next(k for k in ckpt["callbacks"] if k.startswith("GrowInSteps"))
    assert ckpt["callbacks"][key] == {"joined_at": {"0": 0, "1": 2}}
    ckpt["callbacks"][key] = {"grown": [0, 1]}
    torch.save(ckpt, tmp_path / "first_format.ckpt")
    resumed = _fit_growing(copy.deepcopy(fresh), plan, 4, resume=str(tmp_path / "first_format.ckpt"))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_grow_in_steps_resumes_exactly_across_the_growth(grown, tmp_path):
    model, plan = grown
    fresh = copy.deepcopy(model)
    straight = _fit_growing(model, plan, 4)
    _fit_growing(copy.deepcopy(fresh), plan, 4, ckpt_dir=tmp_path)
    for step in (1, 3):  # before the growth (step 2) and after it
        ckpt = next(tmp_path.glob(f"*step={step}.ckpt"))
        resumed = _fit_growing(copy.deepcopy(fresh), plan, 4, resume=str(ckpt))
        for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} after resuming at step {step}")


def test_a_joined_layer_stays_joined_when_a_resume_raises_max_steps(grown, tmp_path):
    """Stage 1 joins at step 2 of 4; resumed at step 3 with max_steps=20 (its planned step would now be 10),
    the layer that has been training since step 2 keeps training, and the FLOPs place it at step 2."""
    model, plan = grown
    late = plan.new_layers[1]
    fresh = copy.deepcopy(model)  # the resumed run starts from untrained weights, as a new process would
    _fit_growing(model, plan, 4, ckpt_dir=tmp_path)
    grow = GrowInSteps(2)
    data = torch.utils.data.DataLoader(torch.randint(0, 256, (40, 16), generator=torch.Generator().manual_seed(0)),
                                       batch_size=2)
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[grow, snaps := _Snapshots()])
    ckpt = next(tmp_path.glob("*step=3.ckpt"))
    resumed_late = {n[len(f"model.model.layers.{late}."):]: t for n, t in
                    torch.load(ckpt, weights_only=False)["state_dict"].items() if f"layers.{late}." in n}
    trainer.fit(_Grown(fresh, plan), data, ckpt_path=str(ckpt))
    assert grow.joined_at == {0: 0, 1: 2}
    first = {n[len(f"model.layers.{late}."):]: t for n, t in snaps.after_step[0].items() if f"layers.{late}." in n}
    # the very first resumed step (step 3) already updates it: it is not skipped until the new step 10
    assert all(not torch.equal(resumed_late[n], first[n]) for n in ("mlp.gate_proj.weight", "self_attn.q_proj.weight"))
    flops = grow.training_flops(_cfg(5), plan, 20, 20, 128, 64)
    assert flops == pytest.approx(training_flops(_cfg(4), 2 * 128, 64) + training_flops(_cfg(5), 18 * 128, 64))

