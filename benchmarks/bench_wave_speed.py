"""Speed of backprobe.wave's forward + adjoint against Deepwave, and of probing vs Exact.

The issue's configuration: a 200 x 200 grid, dx = 10 m, nt = 2000, dt = 1 ms, a 10 Hz
Ricker wavelet, 200 surface receivers, a 20-cell absorbing layer of the same kind and
width as Deepwave's (a CPML: ``--boundary cpml``, the default here; ``--boundary damping``
times our damping layer instead), space order 8 and 4, one shot and a batch of 8. Each
candidate runs forward + backward of ``sum(data)`` with respect to velocity; candidates are
timed round-robin in the same run (``_harness.time_interleaved``) and compared with
``Exact()`` (same boundary) round by round (median of per-round ratios). ``--damping``
adds ``Exact()`` with the damping layer (``exact_damping``) for comparison.

Usage:
    python benchmarks/bench_wave_speed.py [--threads 1] [--clock cpu] [--repeats 3] \
        [--nt 2000] [--boundary cpml] [--damping] [--out benchmarks/results]

Writes ``<out>/wave_speed.json`` and prints a markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import warnings  # noqa: E402

import torch  # noqa: E402
from _harness import arguments, markdown_table, progress, time_interleaved, write_json  # noqa: E402

from backprobe.wave import Exact, TimeProbe, model, ricker  # noqa: E402

COLUMNS = ["order", "shots", "method", "median_s", "per_shot_s", "time_vs_exact", "repeats"]


def velocity() -> torch.Tensor:
    """Three layers, 1500 / 2000 / 2500 m/s."""
    v = torch.full((200, 200), 1500.0)
    v[60:] = 2000.0
    v[130:] = 2500.0
    return v


def main() -> None:
    def add(p):
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--nt", type=int, default=2000)
        p.add_argument("--orders", default="8,4")
        p.add_argument("--shots", default="1,8")
        p.add_argument("--boundary", choices=["cpml", "damping"], default="cpml",
                       help="our absorbing boundary for exact and the probes (default cpml, "
                       "the kind Deepwave uses)")
        p.add_argument("--damping", action="store_true",
                       help="also time Exact() with boundary='damping' (exact_damping)")
        p.add_argument("--warmup", type=int, default=1)

    args = arguments(__doc__, add=add)
    import deepwave

    nt, dt, dx = args.nt, 1e-3, 10.0
    v0 = velocity()
    wavelet = ricker(10.0, nt, dt)
    rec = torch.stack([torch.full((200,), 1.0), torch.arange(200.0)], -1)
    rows = []
    for order in [int(o) for o in args.orders.split(",")]:
        for shots in [int(s) for s in args.shots.split(",")]:
            src = torch.stack([torch.full((shots,), 1.0),
                               torch.linspace(10, 189, shots).round()], -1)

            def ours(imaging, order=order, src=src, boundary=args.boundary):
                v = v0.clone().requires_grad_()
                model(v, dx, dt, wavelet, src, rec, imaging=imaging, space_order=order,
                      pml_width=20, boundary=boundary).sum().backward()

            def dw(order=order, src=src, shots=shots):
                v = v0.clone().requires_grad_()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = deepwave.scalar(
                        v, dx, dt, source_amplitudes=wavelet.expand(shots, 1, -1).contiguous(),
                        source_locations=src.long()[:, None],
                        receiver_locations=rec.long()[None].expand(shots, -1, -1).contiguous(),
                        accuracy=order, pml_width=20, pml_freq=10.0)
                out.receiver_amplitudes.sum().backward()

            progress(f"order {order}, {shots} shot(s)")
            fns = {
                "exact": lambda: ours(Exact()),
                "deepwave": dw,
                "probe32_stride8": lambda: ours(TimeProbe(32, stride=8, seed=0)),
                "probe32": lambda: ours(TimeProbe(32, seed=0)),
            }
            if args.damping:
                fns["exact_damping"] = lambda: ours(Exact(), boundary="damping")
            res = time_interleaved(fns, repeats=args.repeats, warmup=args.warmup,
                                   clock=args.clock)
            for name, r in res.items():
                rows.append({
                    "order": order, "shots": shots, "method": name,
                    "median_s": r["median_s"], "per_shot_s": r["median_s"] / shots,
                    "time_vs_exact": 1.0 / r["speedup"], "repeats": r["repeats"],
                })
            progress(markdown_table(rows[-len(fns):], COLUMNS))
    targets = {
        "exact_over_deepwave_1shot_max": 1.5, "exact_over_deepwave_8shots_max": 1.0,
        "probe32_stride8_over_exact_max": 1.1, "probe32_over_exact_max": 1.5,
    }
    write_json(args.out / f"wave_speed{args.suffix}.json", **{
        "config": {"grid": [200, 200], "dx": dx, "nt": nt, "dt": dt, "ricker_hz": 10.0,
                   "receivers": 200, "pml_width": 20, "boundary": args.boundary,
                   "deepwave": deepwave.__version__, "clock": args.clock,
                   "load_average_1_5_15_at_end": list(os.getloadavg()),
                   "threads": torch.get_num_threads(),
                   "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "note": "time_vs_exact = median over rounds of t_method / t_exact; for deepwave, "
                "1 / time_vs_exact is Exact's time over Deepwave's",
        "targets": targets, "rows": rows,
    })
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
