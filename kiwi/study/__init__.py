"""The small-scale DUS study (conf/experiment/tiny_base.yaml, tiny_dus.yaml, conf/study/*.yaml): gather a
Hydra multirun of up-scaling variants into one table and one plot (``python -m kiwi.study.gather DIR``)."""
