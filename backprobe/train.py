"""Deprecated: the training harness moved to :mod:`backprobe.app`.

:mod:`backprobe.app.training` (train, evaluate, configs), :mod:`backprobe.app.compare`,
:mod:`backprobe.app.memory`, :mod:`backprobe.app.variance`, :mod:`backprobe.app.report`
(tables, JSON) and :mod:`backprobe.app.distributed` (``shard``). Importing this module warns
and re-exports the old names.
"""

import importlib
import warnings

#: The old names and the modules that now define them.
_MOVED = {
    "backprobe.app.compare": ("CompareResult", "compare"),
    "backprobe.app.distributed": ("shard",),
    "backprobe.app.memory": ("MemoryReport", "memory_report"),
    "backprobe.app.report": ("echo", "format_bytes", "write_json"),
    "backprobe.app.training": (
        "DEFAULT_LR", "TrainConfig", "TrainResult", "build_model", "default_image_size",
        "epoch_line", "evaluate", "load_data", "prepare_model", "run_line", "save_model",
        "step_saved_bytes", "train",
    ),
    "backprobe.app.variance": ("VarianceResult", "variance_study"),
}

for _module, _names in _MOVED.items():
    _source = importlib.import_module(_module)
    globals().update({name: getattr(_source, name) for name in _names})

__all__ = sorted(name for names in _MOVED.values() for name in names)

warnings.warn("backprobe.train moved to backprobe.app (training, compare, memory, variance, "
              "report); import from there (backprobe.train will be removed)",
              DeprecationWarning, stacklevel=2)
