# Every target creates .venv if missing and installs the CPU torch first (never an unpinned torch).
PY      := .venv/bin/python
PIP     := $(PY) -m pip
TORCH   := torch==2.13.0

.PHONY: venv install install-dev demo test bench bench-readme lint clean

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[cli,data]"
	touch $@

.venv/.installed-dev: .venv/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: .venv/.installed
install-dev: .venv/.installed-dev

demo: .venv/.installed
	$(PY) -m backprobe compare --model mnist_cnn --data digits --estimators exact,probe:4,probe:16,probe:64 --batch-sizes 32,128 --epochs 10 --threads 1 --out results/demo

# One torch thread per test process: the tests' tensors are small, and on a busy 2-core
# machine two threads contend (40 tiny KFLR steps took 11 s with 2 threads, 0.2 s with 1).
test: .venv/.installed-dev
	OMP_NUM_THREADS=1 $(PY) -m pytest

# Casual runs write under the git-ignored results/bench; bench-readme rewrites the README's.
bench: .venv/.installed
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_networks.py

bench-readme: .venv/.installed
	$(PY) benchmarks/bench_layers.py --out benchmarks/results
	$(PY) benchmarks/bench_networks.py --out benchmarks/results

lint: .venv/.installed-dev
	$(PY) -m ruff check backprobe tests benchmarks
	$(PY) -m mypy backprobe

clean:
	rm -rf .venv build *.egg-info
