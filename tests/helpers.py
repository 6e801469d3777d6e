"""Helpers for tests: compose shipped configs like the entry points do; find development data; the one
tiny-Qwen2 factory and the committed tiny tokenizer; processes that never outlive their test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
# Built by tests/assets/build_tiny_tokenizer.py: a byte-level BPE saved through Qwen2Tokenizer, like kiwi's own.
TINY_TOKENIZER_DIR = ROOT / "tests/assets/tiny_tokenizer"

# Qwen2.5-0.5B's shape (no weights): for parameter counts, FLOPs and 24 -> 38 plans.
QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
    num_hidden_layers=24, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
)
# Default tiny shape; callers override sizes (e.g. vocab_size=len(tokenizer)).
TINY_QWEN2 = dict(
    vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
)


def tiny_qwen2(attn: str = "sdpa", dtype=torch.float32, seed: int = 0, perturb_norms: bool = False,
               **overrides) -> Qwen2ForCausalLM:
    """A real Qwen2ForCausalLM with random weights (seeded), in eval mode; built in milliseconds.

    perturb_norms: add noise to norms and biases (which init to 1 and 0), so every tensor matters when a
    test compares two models for equality."""
    torch.manual_seed(seed)
    config = Qwen2Config(**{**TINY_QWEN2, **overrides})
    model = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
    if perturb_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny_tokenizer():
    """The committed tiny tokenizer (tests/assets/tiny_tokenizer), loaded as kiwi loads any tokenizer."""
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    assert tok.eos_token_id is not None
    return tok


def compose(config_name: str, overrides: list[str], output_dir: Path | None = None):
    """Compose a shipped config exactly as the entry point would (argv normalisation included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from kiwi.cli import CONF_DIR, normalize_overrides

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose(config_name, overrides=normalize_overrides(overrides), return_hydra_config=True)
    from omegaconf import OmegaConf

    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def requires_shared(*parts: str) -> Path:
    """Path under ../shared, or skip: CI and development have it, a user's fresh machine does not."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared holds development data, not shipped with kiwi)")
    return path


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (started with ``start_new_session=True``): it and any
    dataloader worker or child it left behind; then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def process_group(args: Sequence[str], **popen) -> Iterator[subprocess.Popen]:
    """``Popen(args)`` in its own process group (text, stdout/stderr piped unless given), killed as a group
    when the block ends, whether the test passed, failed, timed out or was interrupted."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    proc = subprocess.Popen(list(args), start_new_session=True, **popen)
    try:
        yield proc
    finally:
        kill_group(proc)


def run_in_group(args: Sequence[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    """Run ``args`` to completion in its own process group (see ``process_group``), like ``subprocess.run``
    with ``capture_output=True, text=True``; a timeout kills the whole group and raises."""
    with process_group(args, **popen) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


# mergekit 0.1.5's MergeConfiguration / OutputSliceDefinition / InputSliceDefinition fields (mergekit/config.py),
# checked by hand: mergekit itself is not a kiwi dependency.
MERGEKIT_TOP_KEYS = {"modules", "slices", "models", "merge_method", "base_model", "dtype", "tokenizer_source",
                     "tokenizer", "chat_template", "out_dtype", "parameters"}
MERGEKIT_SLICE_KEYS = {"sources", "base_model", "residual_weight", "parameters"}
MERGEKIT_SOURCE_KEYS = {"model", "layer_range", "parameters"}
MERGEKIT_DTYPES = {"float32", "bfloat16", "float16"}  # mergekit.common.dtype_from_name


def check_mergekit_passthrough(parsed: dict, plan) -> tuple[str, str]:
    """Assert ``parsed`` (a loaded mergekit YAML) is a valid passthrough config whose slices, each one
    half-open ``layer_range [start, end)`` of one model, concatenate to ``plan.sources``; returns
    (model, dtype)."""
    assert set(parsed) <= MERGEKIT_TOP_KEYS, set(parsed) - MERGEKIT_TOP_KEYS
    assert parsed["merge_method"] == "passthrough"
    assert parsed["dtype"] in MERGEKIT_DTYPES, parsed["dtype"]
    assert isinstance(parsed["slices"], list) and parsed["slices"]
    models, rebuilt = set(), []
    for sl in parsed["slices"]:
        assert set(sl) <= MERGEKIT_SLICE_KEYS, sl
        (src,) = sl["sources"]  # passthrough takes exactly one source per slice
        assert set(src) <= MERGEKIT_SOURCE_KEYS, src
        assert isinstance(src["model"], str) and "+" not in src["model"]  # '+' would parse as a LoRA
        start, end = src["layer_range"]
        assert isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= plan.n_source
        models.add(src["model"])
        rebuilt += range(start, end)
    assert tuple(rebuilt) == plan.sources
    (model,) = models
    return model, parsed["dtype"]
