"""Evaluate base vs up-scaled models: `python evaluate.py model.layer_selection=solar checkpoints=[...]`.

Multirun: `python evaluate.py -m model.layer_selection=interleave,solar,llama_pro` (one output dir per job).
"""

import sys

import hydra
from omegaconf import DictConfig

from kiwi.cli import CONF_DIR, log_through_root, normalize_overrides, report_errors


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@report_errors  # a KiwiError ends in one line, not a traceback
def main(cfg: DictConfig) -> None:
    from kiwi.eval.preflight import check_eval_config

    check_eval_config(cfg)  # every option that needs no weights, in a second: before torch and any model
    from kiwi.eval.run import run  # heavy (torch, transformers): lazy, so --help, --cfg and bad options answer at once

    log_through_root()
    run(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    main()
