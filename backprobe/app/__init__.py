"""The backprobe application: command line, training harness, data readers, model zoo, reports.

Nothing here is imported by ``import backprobe``: the core (layers, estimators, quantities,
optim, linalg, wave) stays free of matplotlib, tqdm and scikit-learn, which the app imports
lazily inside the functions that need them.

The command line is :mod:`backprobe.app.cli`; each subcommand is one module exposing
``add_parser(subparsers)`` and ``run(args) -> int``.
"""
