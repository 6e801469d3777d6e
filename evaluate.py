"""Evaluate base vs up-scaled models: `python evaluate.py model.layer_selection=solar checkpoints=[...]`.

Multirun: `python evaluate.py -m model.layer_selection=interleave,solar,llama_pro` (one output dir per job).
"""

import sys

import hydra
from omegaconf import DictConfig

from kiwi.config import CONF_DIR, normalize_overrides


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    from kiwi.eval.run import run

    run(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    main()
