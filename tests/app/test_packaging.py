"""pyproject.toml: the SPDX license string (no setuptools deprecation banner on install)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_license_is_an_spdx_string_and_setuptools_accepts_it():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in meta["project"].get("classifiers", []))
    # PEP 639 license expressions need setuptools 77 or later
    assert meta["build-system"]["requires"] == ["setuptools>=77"]


def test_make_bench_and_examples_write_under_results():
    makefile = (ROOT / "Makefile").read_text()
    bench = makefile.split("\nbench:")[1].split("\n\n")[0]
    assert "benchmarks/results" not in bench and "docs/img" not in bench
    for example in (ROOT / "examples").glob("*.py"):
        text = example.read_text()
        for line in text.splitlines():
            if "default=" in line and ("docs" in line or "benchmarks" in line):
                pytest.fail(f"{example.name} writes tracked files by default: {line.strip()}")
