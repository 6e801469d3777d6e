"""Continue-pretrain a depth-up-scaled Qwen2: `python train.py model.layer_selection=interleave`."""

import sys

import hydra
from omegaconf import DictConfig

from kiwi.config import CONF_DIR, normalize_overrides


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from kiwi.train.run import run

    result = run(cfg)
    return result.get("val/ppl")  # the metric a Hydra sweeper optimises


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    main()
