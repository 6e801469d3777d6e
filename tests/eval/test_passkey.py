"""passkey: exact-length haystacks with the needle at the asked depth, scored by one forward pass that
agrees with greedy generation and with HF's full logits."""

from __future__ import annotations

import json

import pytest
import torch

from kiwi.errors import ConfigError
from kiwi.eval.encoding import encode
from kiwi.eval.passkey import (
    FILLER,
    Filler,
    Prompt,
    PromptBuilder,
    evaluate_passkey,
    load_filler,
    score_prompts,
    sentences,
)

from .conftest import _TRAIN_TEXT, compose_eval


def _task(**kw):
    return {"name": "passkey", "type": "passkey", "lengths": [256, 384], "depths": [0, 50, 100], "trials": 3,
            "digits": 5, "seed": 0, "filler": None, "filler_files": None, "limit": None, **kw}


def _find(seq, sub):
    return next(i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub)


def test_prompts_are_exactly_length_tokens_with_the_needle_at_depth(eval_tokenizer):
    task = _task()
    builder = PromptBuilder(eval_tokenizer, load_filler(task), task)
    needle_len = {}
    for depth in (0, 50, 100):
        p = builder.prompt(384, depth, 0)
        assert len(p.tokens) == 384 and p.key == builder.keys[0] and len(p.key) == 5
        needle = encode(eval_tokenizer, f" The pass key is {p.key}. Remember it. {p.key} is the pass key.")
        assert p.tokens[p.needle_at : p.needle_at + len(needle)] == needle
        needle_len[depth] = p.needle_at
        assert eval_tokenizer.decode(p.tokens[-p.n_key :]).strip() == p.key  # the prompt ends with the key
    instruction = len(builder.instruction)
    question_and_key = len(encode(eval_tokenizer, " What is the pass key? The pass key is " + builder.keys[0]))
    assert needle_len[0] == instruction  # 0%: right after the instruction
    assert 384 - needle_len[100] - len(needle) == pytest.approx(question_and_key, abs=1)  # 100%: before the question
    assert needle_len[0] < needle_len[50] < needle_len[100]
    # trial i has one key in every cell; trials differ
    assert builder.prompt(256, 50, 1).key == builder.prompt(384, 0, 1).key != builder.prompt(384, 0, 0).key


def test_filler_from_a_local_file_is_real_text(tmp_path, eval_tokenizer):
    text = " ".join(_TRAIN_TEXT)
    path = tmp_path / "filler.txt"
    path.write_text(text, encoding="utf-8")
    task = _task(filler_files=[str(path)])
    filler = load_filler(task)
    assert filler.sentences == sentences(text) and "filler.txt" in filler.origin
    p = PromptBuilder(eval_tokenizer, filler, task).prompt(384, 50, 0)
    assert FILLER.split(".")[0] not in eval_tokenizer.decode(p.tokens)
    assert filler.sentences[PromptBuilder(eval_tokenizer, filler, task).offsets[0]] in eval_tokenizer.decode(p.tokens)


def test_bad_options_fail_before_loading():
    with pytest.raises(ConfigError, match="tasks.passkey.depths"):
        load_filler(_task(depths=[0, 150]))
    with pytest.raises(ConfigError, match="tasks.passkey.lengths"):
        load_filler(_task(lengths=[]))
    with pytest.raises(ConfigError, match="tasks.passkey.trials"):
        load_filler(_task(trials=0))


def test_a_length_too_short_for_the_prompt_names_the_option(eval_tokenizer):
    task = _task(lengths=[8])
    with pytest.raises(ConfigError, match="tasks.passkey.lengths: 8 tokens"):
        PromptBuilder(eval_tokenizer, load_filler(task), task).prompt(8, 0, 0)


def test_scores_equal_greedy_generation_and_full_logits(tiny_lm, eval_tokenizer):
    """Retrieval counts as exact iff greedy generation reproduces the key: checked with a 'key' set to the
    model's own greedy continuation (hit), the same with one token changed (miss), and the log-likelihood
    against log_softmax of HF's full logits."""
    task = _task()
    p = PromptBuilder(eval_tokenizer, load_filler(task), task).prompt(256, 50, 0)
    prompt = p.tokens[: -p.n_key]
    gen = tiny_lm.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           max_new_tokens=3, do_sample=False, pad_token_id=0)[0, len(prompt) :].tolist()
    greedy = Prompt(prompt + gen, 3, "greedy", len(prompt) + 3, 50, p.needle_at)
    wrong = Prompt(prompt + gen[:2] + [(gen[2] + 1) % len(eval_tokenizer)], 3, "wrong", greedy.length, 50, 0)
    (lp_hit, hit), (lp_miss, miss), (lp_key, key_hit) = score_prompts(tiny_lm, [greedy, wrong, p], 10_000)
    assert hit and not miss
    for prompt_, lp in ((greedy, lp_hit), (wrong, lp_miss), (p, lp_key)):
        ids = torch.tensor([prompt_.tokens[:-1]])
        with torch.no_grad():
            ref = torch.log_softmax(tiny_lm(input_ids=ids).logits.double(), -1)[0, -prompt_.n_key :]
        expect = float(ref.gather(-1, torch.tensor(prompt_.tokens[-prompt_.n_key :]).unsqueeze(-1)).sum())
        assert lp == pytest.approx(expect, abs=1e-4)
    gen_key = tiny_lm.generate(torch.tensor([p.tokens[: -p.n_key]]), attention_mask=torch.ones(1, 256 - p.n_key,
                               dtype=torch.long), max_new_tokens=p.n_key, do_sample=False, pad_token_id=0)
    assert key_hit == (gen_key[0, -p.n_key :].tolist() == p.tokens[-p.n_key :])


def test_batched_cells_equal_one_by_one(tiny_lm, eval_tokenizer):
    task = _task(lengths=[256], depths=[25])

    class Cfg:
        token_budget = 256 * 3  # all trials of a cell in one batch

    batched, _ = evaluate_passkey(tiny_lm, eval_tokenizer, load_filler(task), task, Cfg, None)
    Cfg.token_budget = 1
    single, records = evaluate_passkey(tiny_lm, eval_tokenizer, load_filler(task), task, Cfg, None)
    assert batched["key_logprob@256@25"] == pytest.approx(single["key_logprob@256@25"], abs=1e-4)
    assert batched["acc@256@25"] == single["acc@256@25"] and len(records) == 3
    assert single["key_logprob"] == pytest.approx(sum(r["key_logprob"] for r in records) / 3)


def test_evaluate_writes_grid_results_heatmap_and_wandb(tmp_path, kiwi_cache):
    """evaluate.py's run: passkey on the tiny model, a grid table, per-cell numbers in results.json, the
    heatmap, and the heatmap in the (offline) W&B run."""
    import wandb

    from kiwi.eval.run import run

    out = tmp_path / "out"
    cfg = compose_eval(["model=tiny", "compare_base=false", "logger=wandb", "run_tasks=[passkey]", "progress=false",
                        "tasks.passkey.lengths=[128,256]", "tasks.passkey.depths=[0,50,100]", "limit=2",
                        "log_samples=true"], out)
    results = run(cfg)
    (model,) = results
    saved = json.loads((out / "results.json").read_text())["results"][model]["passkey"]
    cells = {k for k in saved if k.startswith("acc@")}
    assert cells == {f"acc@{n}@{d}" for n in (128, 256) for d in (0, 50, 100)}
    assert saved["n"] == 12 and saved["trials"] == 2 and 0.0 <= saved["acc"] <= 1.0
    assert "| 256 |" in (out / "passkey.md").read_text() and (out / "passkey.png").stat().st_size > 0
    assert len((out / "passkey.csv").read_text().splitlines()) == 1 + 6
    assert len((out / "samples" / f"{model}__passkey.jsonl").read_text().splitlines()) == 12
    assert wandb.run is None
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert list((run_dir / "files" / "media" / "images" / "eval").glob("passkey_*.png"))


def test_custom_filler_text_is_split_into_sentences(eval_tokenizer):
    filler = load_filler(_task(filler="One thing. Another thing!"))
    assert filler == Filler(["One thing.", "Another thing!"], "tasks.passkey.filler")


def test_real_wikipedia_filler_from_the_shared_shards(tiny_lm, eval_tokenizer):
    """filler_files on the shared Wikipedia shard (gzipped jsonl): real sentences, read only as far as needed."""
    from tests.helpers import requires_shared

    shard = requires_shared("data", "wikipedia-en-2015", "train-00.jsonl.gz")
    task = _task(lengths=[384], depths=[50], trials=2, filler_files=[str(shard)])
    filler = load_filler(task)
    assert "wikipedia-en-2015" in filler.origin and FILLER.split(".")[0] + "." not in filler.sentences
    assert sum(len(s) for s in filler.sentences) < 64 * 384 * 16  # stopped after ~16 x 384 bytes of articles

    class Cfg:
        token_budget = 1024

    metrics, records = evaluate_passkey(tiny_lm, eval_tokenizer, filler, task, Cfg, None)
    assert metrics["n"] == 2 and {r["depth"] for r in records} == {50}
