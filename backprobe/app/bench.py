"""``backprobe bench layers|networks``: run a benchmark script of the source checkout.

The benchmarks are scripts in the repository's ``benchmarks/`` folder, not part of the
installed package; this command finds ``benchmarks/bench_<what>.py`` (in the current
directory, else beside the package in a source checkout) and runs it with the flags given.
Without a checkout it says so and points at ``make bench``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from backprobe.app._args import ints
from backprobe.app._checks import output_dir, positive

SCRIPTS = ("layers", "networks")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "bench", help="layer and network benchmarks (runs benchmarks/bench_*.py of a checkout)")
    p.add_argument("what", choices=SCRIPTS, help="which benchmark")
    p.add_argument("--full", action="store_true", help="the full grid instead of the quick one")
    p.add_argument("--r", type=ints, default=None, help="probe counts (default: per grid)")
    p.add_argument("--networks", default=None,
                   help="comma-separated substrings of network names to run (networks only)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per grid)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed rounds per timing before stopping early")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or process CPU time (steadier on a shared machine)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default="results/bench",
                   help="directory for the JSON and PNG (default results/bench, git-ignored; "
                   "benchmarks/results rewrites the README's)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def find_script(what: str) -> Path:
    """The path of ``benchmarks/bench_<what>.py``.

    Args:
        what: ``"layers"`` or ``"networks"``.

    Returns:
        The script, looked up under the current directory, then under the checkout that
        holds the imported package.

    Raises:
        FileNotFoundError: if neither place has it (an installed package without a checkout).
    """
    name = Path("benchmarks") / f"bench_{what}.py"
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{name} not found: the benchmarks ship with the source checkout, not the package; "
        "run `make bench` (or python benchmarks/bench_*.py) in a clone of backprobe")


def script_argv(args: argparse.Namespace) -> list[str]:
    """The flags of the benchmark script that ``args`` (the parsed ``bench`` command) mean."""
    argv = ["--full" if args.full else "--quick", "--warmup", str(args.warmup),
            "--clock", args.clock, "--out", str(args.out)]
    if getattr(args, "no_progress", False):
        argv.append("--no-progress")
    for flag, value in (("--r", ",".join(map(str, args.r or [])) or None),
                        ("--repeats", args.repeats), ("--budget", args.budget),
                        ("--threads", args.threads), ("--networks", args.networks)):
        if value is not None and not (flag == "--networks" and args.what != "networks"):
            argv += [flag, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    """Run the benchmark script in a fresh interpreter; its exit status is the command's.

    The flags are checked first (the script checks them again, and ``--networks`` names).
    """
    positive("--repeats", args.repeats)
    positive("--threads", args.threads)
    for r in args.r or []:
        positive("--r", r, allow_none=False)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.budget is not None and not args.budget > 0:
        raise ValueError(f"--budget must be a positive number of seconds, got {args.budget}")
    if args.networks is not None and args.what != "networks":
        raise ValueError("--networks applies to `bench networks` only")
    output_dir("--out", args.out)
    script = find_script(args.what)
    return subprocess.run([sys.executable, str(script), *script_argv(args)], check=False).returncode
