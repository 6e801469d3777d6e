"""Layer plans: every strategy, 24 -> 38 expectations, serialisation, mergekit export, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from kiwi.upscale import STRATEGIES, LayerPlan, make_plan, plan_from_config
from kiwi.upscale.strategies import spread_evenly
from tests.helpers import QWEN25_05B, check_mergekit_passthrough

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model" / "layer_selection"

EXPECTED_24_38 = {
    "interleave": [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9, 9, 10, 11, 11, 12, 12, 13, 14, 14, 15,
                   16, 16, 17, 18, 18, 19, 19, 20, 21, 21, 22, 23, 23],
    "solar": list(range(19)) + list(range(5, 24)),
    "stack": list(range(24)) + list(range(14)),
    "llama_pro": [0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9, 10, 11, 11, 12, 13, 13, 14, 15, 15, 16,
                  17, 17, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23, 23],
}


@pytest.mark.parametrize("strategy", sorted(EXPECTED_24_38))
def test_24_to_38_sources(strategy):
    plan = make_plan(strategy, 24, 38)
    assert list(plan.sources) == EXPECTED_24_38[strategy]
    assert plan.n_target == 38 and plan.n_source == 24
    assert len(plan.new_layers) == 14


def test_24_to_38_other_strategies():
    explicit = make_plan("explicit", 24, 38, slices=[[0, 19], [5, 24]])
    assert explicit.sources == make_plan("solar", 24, 38).sources
    scores = [float(i % 7) for i in range(24)]
    imp = make_plan("importance", 24, 38, scores=scores)
    assert imp.n_target == 38 and len(imp.new_layers) == 14
    with pytest.raises(ValueError, match="n_target"):
        make_plan("none", 24, 38)
    assert make_plan("none", 24).sources == tuple(range(24))


def test_interleave_duplicates_follow_original_and_spread():
    plan = make_plan("interleave", 24, 38)
    for j in plan.new_layers:
        assert plan.sources[j] == plan.sources[j - 1]
    assert spread_evenly(14, 24) == [0, 2, 4, 6, 7, 9, 11, 12, 14, 16, 18, 19, 21, 23]
    # more duplicates than layers: every layer repeated, still non-decreasing
    big = make_plan("interleave", 4, 11)
    assert list(big.sources) == sorted(big.sources) and big.n_target == 11
    assert all(big.sources.count(s) >= 2 for s in range(4))


def test_llama_pro_any_target_and_defaults():
    plan = make_plan("llama_pro", 6, 8)
    # groups [0,1,2] [3,4,5] -> copies of 2 and 5 inserted after them
    assert plan.sources == (0, 1, 2, 2, 3, 4, 5, 5)
    assert plan.identity_init == (False, False, False, True, False, False, False, True)
    assert plan.trainable == "new" and plan.preserves_function
    odd = make_plan("llama_pro", 6, 9)
    assert odd.sources == (0, 1, 1, 2, 3, 3, 4, 5, 5)
    assert make_plan("llama_pro", 6, 9, identity_init=False, trainable="all").trainable_layers == (True,) * 9


def test_solar_m_and_parity():
    assert make_plan("solar", 24, 38, m=5).sources == make_plan("solar", 24, 38).sources
    with pytest.raises(ValueError, match="'n_target'.*odd"):
        make_plan("solar", 24, 37)
    with pytest.raises(ValueError, match="'m'"):
        make_plan("solar", 24, 38, m=4)
    with pytest.raises(ValueError, match="'m'"):
        make_plan("solar", 24, 50)


def test_identity_init_and_preserves_function():
    for strategy in ("interleave", "solar", "stack", "llama_pro"):
        plan = make_plan(strategy, 24, 38, identity_init=True)
        assert plan.preserves_function, strategy
        assert [j for j, b in enumerate(plan.identity_init) if b] == list(plan.new_layers)
    assert not make_plan("interleave", 24, 38).preserves_function
    assert make_plan("none", 24).preserves_function
    reordered = make_plan("explicit", 4, layers=[1, 0, 2, 3, 3], identity_init=True)
    assert not reordered.preserves_function


def test_importance_direction_changes_plan():
    scores = [0.1, 0.9, 0.2, 0.8, 0.3, 0.05]
    most = make_plan("importance", 6, 8, scores=scores, direction="most")
    least = make_plan("importance", 6, 8, scores=scores, direction="least")
    assert most.sources == (0, 1, 1, 2, 3, 3, 4, 5)
    assert least.sources == (0, 0, 1, 2, 3, 4, 5, 5)
    many = make_plan("importance", 3, 8, scores=[0.5, 0.9, 0.1])
    assert many.sources == (0, 0, 0, 1, 1, 1, 2, 2)  # 5 extra: 2 each for top-2, 1 for last


def test_serialisation_round_trip(tmp_path):
    plan = make_plan("importance", 6, 9, scores=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], identity_init=True)
    assert LayerPlan.from_json(plan.to_json()) == plan
    assert LayerPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert LayerPlan.from_dict(plan.to_dict()) == plan
    (tmp_path / "bad.json").write_text('{"strategy": "x"}')
    with pytest.raises(ValueError, match="bad.json"):
        LayerPlan.load(tmp_path / "bad.json")


def test_table_lists_every_layer():
    plan = make_plan("llama_pro", 6, 8)
    text = plan.table()
    lines = text.splitlines()
    assert "llama_pro" in lines[0] and "6->8" in lines[0]
    assert len(lines) == 3 + 8
    assert lines[3 + 3].split()[:4] == ["3", "2", "duplicate", "yes"]


@pytest.mark.parametrize("strategy", ["interleave", "solar", "stack", "llama_pro"])
def test_mergekit_yaml_round_trip(strategy):
    plan = make_plan(strategy, 24, 38)
    text = plan.to_mergekit_yaml("Qwen/Qwen2.5-0.5B", "float32")
    for parsed in (yaml.safe_load(text), OmegaConf.to_container(OmegaConf.create(text))):
        assert check_mergekit_passthrough(parsed, plan) == ("Qwen/Qwen2.5-0.5B", "float32")
    assert ("identity_init cannot be expressed" in text) == any(plan.identity_init)


def test_mergekit_runs_are_merged():
    plan = make_plan("solar", 24, 38)
    assert plan.slices() == [(0, 19), (5, 24)]
    assert make_plan("explicit", 4, layers=[0, 1, 1, 2, 3]).slices() == [(0, 2), (1, 4)]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        (dict(strategy="nope", n_source=6, n_target=8), "strategy"),
        (dict(strategy="interleave", n_source=6, n_target=8, m=2), "m"),
        (dict(strategy="explicit", n_source=6, layers=[0, 6]), "layers"),
        (dict(strategy="explicit", n_source=6, slices=[[0, 7]]), "slices"),
        (dict(strategy="explicit", n_source=6, layers=[]), "layers"),
        (dict(strategy="explicit", n_source=6, slices=[]), "slices"),
        (dict(strategy="interleave", n_source=6, n_target=4), "n_target"),
        (dict(strategy="stack", n_source=6, n_target=4), "n_target"),
        (dict(strategy="llama_pro", n_source=6, n_target=5), "n_target"),
        (dict(strategy="importance", n_source=3, n_target=4, scores=[]), "scores"),
        (dict(strategy="importance", n_source=3, n_target=4, scores=[1.0, 2.0]), "scores"),
        (dict(strategy="importance", n_source=3, n_target=4, scores=[1, 2, 3], direction="up"), "direction"),
        (dict(strategy="interleave", n_source=6, n_target=8, trainable="some"), "trainable"),
        (dict(strategy="interleave", n_source=6, n_target=8, identity_init="yes"), "identity_init"),
    ],
)
def test_make_plan_errors_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=f"'{option}'"):
        make_plan(kwargs.pop("strategy"), kwargs.pop("n_source"), kwargs.pop("n_target", None), **kwargs)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'layerz'.*valid options.*'layers', 'slices'"):
        plan_from_config({"strategy": "explicit", "layerz": [0]}, 6)


@pytest.mark.parametrize(
    ("cfg", "option"),
    [
        ({"strategy": "bogus"}, "strategy"),
        ({}, "strategy"),
        ({"strategy": "solar", "n_target": 10, "bogus": 1}, "bogus"),
        ({"strategy": "explicit", "layers": [0, 1, 99]}, "layers"),
        ({"strategy": "explicit", "layers": []}, "layers"),
        ({"strategy": "interleave", "n_target": 3}, "n_target"),
        ({"strategy": "interleave", "n_target": None, "param_budget": None}, "n_target"),
        ({"strategy": "interleave", "n_target": 8, "param_budget": 1e6}, "param_budget"),
        ({"strategy": "interleave", "n_target": None, "param_budget": 1e6}, "param_budget"),
        ({"strategy": "importance", "n_target": 8}, "scores"),
        ({"strategy": "importance", "n_target": 8, "scores": [1, 2, 3, 4, 5, 6], "metric": "bogus"}, "metric"),
    ],
)
def test_plan_from_config_errors(cfg, option):
    with pytest.raises(ValueError, match=f"'{option}'"):
        plan_from_config(cfg, 6)


def test_every_strategy_has_a_config_file_that_builds_a_plan():
    files = {p.stem for p in CONF_DIR.glob("*.yaml")}
    assert files == set(STRATEGIES)
    scores = [float(i) for i in range(24)]
    for name in sorted(files):
        cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
        plan = plan_from_config(cfg, 24, scores=scores)
        assert plan.strategy == name
        assert plan.n_target == (24 if name == "none" else 38), name


def test_plan_from_config_param_budget():
    from transformers import Qwen2Config

    qwen = Qwen2Config(**QWEN25_05B)
    cfg = OmegaConf.load(CONF_DIR / "interleave.yaml")
    cfg.n_target = None
    cfg.param_budget = 7.03e8
    plan = plan_from_config(cfg, 24, model_config=qwen)
    assert plan.n_target == 38
    cfg.param_budget = "7.03e8"  # PyYAML reads exponent floats without a dot as strings
    assert plan_from_config(cfg, 24, model_config=qwen).n_target == 38
