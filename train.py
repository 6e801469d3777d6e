"""Continue-pretrain a depth-up-scaled Qwen2: `python train.py model.layer_selection=interleave`."""

import sys

import hydra
from omegaconf import DictConfig

from kiwi.cli import CONF_DIR, log_through_root, normalize_overrides, report_errors


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@report_errors  # a KiwiError ends in one line, not a traceback
def main(cfg: DictConfig) -> float | None:
    from kiwi.train.preflight import check_train_config

    check_train_config(cfg)  # every option that needs no weights, in a second: before torch, data and loggers
    from kiwi.train.run import run  # heavy (torch, lightning): lazy, so --help, --cfg and bad options answer at once

    log_through_root()
    result = run(cfg)
    return result.get("val/ppl")  # the metric a Hydra sweeper optimises


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    main()
