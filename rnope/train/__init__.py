"""Training: run config and stages, the training stream, the loop, checkpoints, torchrun.

* :mod:`~rnope.train.runconfig` — :class:`RunConfig`, :class:`Stage` (YAML/JSON run files).
* :mod:`~rnope.train.schedule` — :func:`lr_at`, warm-up + cosine as a pure function.
* :mod:`~rnope.train.stream` — packed corpus + synthetic retrieval documents; long/short mixing.
* :mod:`~rnope.train.loop` — :class:`Plan` and :func:`train`.
* :mod:`~rnope.train.state` — atomic checkpoints with optimizer / RNG / data position.
* :mod:`~rnope.train.distributed` — torchrun, DDP, FSDP2 and full-state gather.

Command line: ``rnope train`` (:mod:`rnope.commands.train`).
"""

from .loop import Plan, train
from .runconfig import RunConfig, Stage, load_run_file, stage_model_configs
from .schedule import lr_at

__all__ = ["Plan", "RunConfig", "Stage", "load_run_file", "lr_at", "stage_model_configs", "train"]
