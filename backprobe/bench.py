"""Deprecated: the benchmark harness moved out of the package, to ``benchmarks/``.

``benchmarks/_harness.py`` (machine info, interleaved timing, JSON), ``bench_layers.py`` and
``bench_networks.py``; run them with ``make bench`` or ``backprobe bench layers|networks``.
In a source checkout this module still re-exports their functions, with a warning.
"""

import sys
import warnings
from pathlib import Path

warnings.warn("backprobe.bench moved out of the package: use benchmarks/_harness.py and "
              "benchmarks/bench_{layers,networks}.py (make bench, or backprobe bench ...)",
              DeprecationWarning, stacklevel=2)

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
if not (_DIR / "_harness.py").is_file():
    raise ImportError("backprobe.bench moved to the benchmarks/ folder of the source checkout, "
                      "which this installation lacks; run `make bench` in a clone")
if str(_DIR) not in sys.path:
    sys.path.insert(0, str(_DIR))

from _harness import machine_info, markdown_table, time_interleaved, write_json  # noqa: E402
from bench_layers import (  # noqa: E402
    LayerCase,
    bench_layer,
    layer_grid,
    layers_markdown,
    plot_layers,
    run_layers,
)
from bench_networks import (  # noqa: E402
    NetworkCase,
    bench_network,
    network_cases,
    networks_markdown,
    plot_networks,
    run_networks,
)

__all__ = ["LayerCase", "NetworkCase", "bench_layer", "bench_network", "layer_grid",
           "layers_markdown", "machine_info", "markdown_table", "network_cases",
           "networks_markdown", "plot_layers", "plot_networks", "run_layers", "run_networks",
           "time_interleaved", "write_json"]
