"""Deprecated: the training harness moved to :mod:`backprobe.app`.

:mod:`backprobe.app.training` (train, evaluate, configs), :mod:`backprobe.app.compare`,
:mod:`backprobe.app.memory`, :mod:`backprobe.app.variance`, :mod:`backprobe.app.report`
(tables, JSON) and :mod:`backprobe.app.distributed` (``shard``). Importing this module warns
and re-exports the old names.
"""

import warnings

from backprobe.app.compare import CompareResult, compare
from backprobe.app.distributed import shard
from backprobe.app.memory import MemoryReport, memory_report
from backprobe.app.report import echo, format_bytes, write_json
from backprobe.app.training import (
    DEFAULT_LR,
    TrainConfig,
    TrainResult,
    build_model,
    default_image_size,
    epoch_line,
    evaluate,
    load_data,
    prepare_model,
    run_line,
    save_model,
    step_saved_bytes,
    train,
)
from backprobe.app.variance import VarianceResult, variance_study

__all__ = [
    "DEFAULT_LR", "CompareResult", "MemoryReport", "TrainConfig", "TrainResult", "VarianceResult",
    "build_model", "compare", "default_image_size", "echo", "epoch_line", "evaluate",
    "format_bytes", "load_data", "memory_report", "prepare_model", "run_line", "save_model",
    "shard", "step_saved_bytes", "train", "variance_study", "write_json",
]

warnings.warn("backprobe.train moved to backprobe.app (training, compare, memory, variance, "
              "report); import from there (backprobe.train will be removed)",
              DeprecationWarning, stacklevel=2)
