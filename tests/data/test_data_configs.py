"""Each conf/data/*.yaml composes and instantiates into a working datamodule (hub: constructed only)."""

from __future__ import annotations

import itertools

import pytest
from hydra.utils import instantiate

from kiwi.data.datamodule import PackedDataModule
from kiwi.data.sources import CorpusSource, FileSource, HubSource
from tests.data.data_helpers import check_row, make_docs, split_into_files
from tests.helpers import requires_shared


@pytest.fixture
def compose_cfg(kiwi_cache):
    """The shipped train config with a data group chosen, composed as the entry point does (the data
    group needs only ``paths``, so the Hydra runtime config is not required)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kiwi.cli import CONF_DIR

    def _compose(config_name: str, overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose(config_name, overrides=overrides)

    yield _compose
    GlobalHydra.instance().clear()


def _first_batches(dm: PackedDataModule, n: int = 2) -> list[dict]:
    dm.prepare_data()
    dm.setup("fit")
    batches = [dm.on_before_batch_transfer(b, 0) for b in itertools.islice(iter(dm.train_dataloader()), n)]
    for batch in batches:
        for i in range(len(batch["input_ids"])):
            check_row({k: v[i] for k, v in batch.items() if v.dim()}, dm.seq_len, dm.tokenizer.eos_token_id)
    return batches


def test_wikipedia_config_is_constructed_not_streamed(compose_cfg, tokenizer):
    cfg = compose_cfg("train", ["data=wikipedia"])
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm.source, HubSource)
    assert (dm.source.path, dm.source.name, dm.source.split) == ("wikimedia/wikipedia", "20231101.en", "train")
    assert dm.seq_len == 32768 and dm.val_seq_len == 32768 and dm.val_documents > 0


def test_local_config(compose_cfg, tokenizer, tmp_path):
    files = split_into_files(tmp_path, make_docs(40), n_files=2)
    cfg = compose_cfg(
        "train",
        [
            "data=local",
            f"data.source.files=[{tmp_path}/*.jsonl]",
            "data.seq_len=64",
            "data.num_workers=0",
            "data.val_documents=4",
            "data.partitions=4",  # 36 training documents: fewer than the default 64 partitions
        ],
    )
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm.source, FileSource) and [str(p) for p in dm.source.files] == files
    assert len(_first_batches(dm)) == 2
    assert len(list(dm.val_dataloader())) >= 1


def test_corpus_config(compose_cfg, tokenizer, kiwi_cache):
    cfg = compose_cfg(
        "train", ["data=corpus", "data.source.packages=[numpy]", "data.seq_len=128", "data.num_workers=0"]
    )
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm.source, CorpusSource)
    assert len(_first_batches(dm)) == 2
    assert str(dm.source.files[0]).startswith(str(kiwi_cache))


def test_wikitext_shared_config(compose_cfg, tokenizer):
    requires_shared("data", "wikitext-2-raw", "valid.txt")
    cfg = compose_cfg("train", ["data=wikitext_shared", "data.seq_len=256", "data.num_workers=0"])
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert dm.source.sample_by == "wikitext"
    assert len(_first_batches(dm)) == 2


def test_wikitext_shared_config_names_a_missing_file(compose_cfg, tokenizer, tmp_path):
    cfg = compose_cfg("train", ["data=wikitext_shared", f"data.source.files=[{tmp_path}/valid.txt]"])
    with pytest.raises(Exception, match="file not found: .*valid.txt"):
        instantiate(cfg.data, tokenizer=tokenizer)
