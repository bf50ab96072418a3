"""``backprobe fwi`` and ``backprobe wave-memory``: argument errors before any work, tiny runs."""

import json

import pytest

from backprobe.app.cli import main
from backprobe.app.fwi import parse_imaging
from backprobe.wave import DFT, Checkpoint, Exact, TimeProbe


def test_parse_imaging_specs():
    assert isinstance(parse_imaging("exact"), Exact) and parse_imaging("exact").stride == 1
    assert parse_imaging("exact:stride=4").stride == 4
    assert parse_imaging("checkpoint:6").snapshots == 6
    p = parse_imaging("probe:32:data:stride=8")
    assert isinstance(p, TimeProbe) and (p.r, p.probes, p.stride) == (32, "data", 8)
    assert parse_imaging("probe:4").probes == "rademacher"
    assert parse_imaging("probe:4:hutchpp:seed=3").probes == "hutchpp"
    d = parse_imaging("dft:12:stride=2")
    assert isinstance(d, DFT) and d.frequencies == 12 and d.stride == 2
    assert isinstance(parse_imaging("CHECKPOINT:2"), Checkpoint)


@pytest.mark.parametrize("spec,match", [
    ("probe:0", "r in"), ("probe:8:sobol", "probe kind"), ("probe", "expected probe"),
    ("checkpoint", "expected checkpoint"), ("dft:x", "frequencies"), ("exact:3", "exact takes"),
    ("exact:stride=0", "stride"), ("probe:8:speed=2", "unknown option"), ("revolve:3", "expected exact"),
    ("dft:4:seed=1", "seed= applies"),
])
def test_parse_imaging_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_imaging(spec)


@pytest.mark.parametrize("argv,match", [
    (["fwi", "--imaging", "probe:0"], "r in"),
    (["fwi", "--imaging", "exact,bogus"], "expected exact"),
    (["fwi", "--shape", "10"], "NZ,NX"),
    (["fwi", "--iterations", "0"], "positive"),
    (["fwi", "--shots", "-2"], "positive"),
    (["fwi", "--dt", "nan"], "positive"),
    (["fwi", "--model", "no/such/file.bin"], "existing raw velocity file"),
    (["fwi", "--vmin", "3000", "--vmax", "2000"], "--vmin"),
    (["fwi", "--shape", "8,10", "--shots", "11"], "exceeds"),
    (["fwi", "--pml-width", "-1"], "pml-width"),
    (["fwi", "--optimizer", "adam"], "invalid choice"),
    (["wave-memory", "--probes", "0,8"], "positive integers"),
    (["wave-memory", "--space-order", "3"], "invalid choice"),
])
def test_cli_argument_errors_exit_before_work(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--threads", "1"] if argv[0] == "fwi" and "--out" not in argv else argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "fwi.json").exists()


def test_fwi_raw_file_with_wrong_shape(tmp_path, capsys):
    from backprobe.wave.io import write_raw
    from backprobe.wave.velocity_models import layered

    path = tmp_path / "v.bin"
    write_raw(path, layered((12, 20)))
    with pytest.raises(SystemExit):
        main(["fwi", "--model", str(path), "--shape", "12,21", "--out", str(tmp_path)])
    assert "holds 960 bytes" in capsys.readouterr().err


def test_fwi_tiny_run_writes_json_and_pngs(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fwi", "--model", "layered", "--shape", "12,24", "--nt", "150", "--freq", "20",
                 "--shots", "2", "--iterations", "2", "--space-order", "4", "--pml-width", "6",
                 "--imaging", "exact,probe:8:data", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "fwi.json").read_text())
    assert set(summary["runs"]) == {"exact", "probe:8:data"}
    for run in summary["runs"].values():
        assert len(run["misfit"]) == 3 and run["misfit"][-1] < run["misfit"][0]
        assert run["bytes_held_per_chunk"] > 0
    assert summary["runs"]["exact"]["gradient_error_vs_exact"] == pytest.approx(0.0, abs=1e-6)
    held = {k: r["bytes_held_per_chunk"] for k, r in summary["runs"].items()}
    assert held["probe:8:data"] < held["exact"]
    for name in ("models.png", "gradients.png", "misfit.png", "v_exact.bin"):
        assert (out / name).stat().st_size > 0
    assert "probe:8:data" in capsys.readouterr().out


def test_wave_memory_measures_bytes(tmp_path, capsys):
    path = tmp_path / "mem.json"
    assert main(["wave-memory", "--shape", "20,30", "--nt", "64", "--pml-width", "5",
                 "--probes", "4", "--frequencies", "3", "--snapshots", "2", "--strides", "4",
                 "--json", str(path)]) == 0
    table = json.loads(path.read_text())
    rows = {r["strategy"]: r for r in table["rows"]}
    domain = table["domain_cells"]
    assert domain == 30 * 40
    # Exact keeps every step of the whole domain: exactly nt fields of float32.
    assert rows["FWI: Exact()"]["measured_bytes"] == 64 * domain * 4
    assert rows["strided: Exact(stride=4)"]["measured_bytes"] == 16 * domain * 4
    assert rows["probing: TimeProbe(4)"]["measured_bytes"] >= 4 * domain * 4
    assert "not implemented" in capsys.readouterr().out


def test_output_paths_checked_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv, match in [(["fwi", "--out", str(blocker), "--threads", "1"], "is a file"),
                        (["wave-memory", "--json", str(tmp_path)], "is a directory")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert match in capsys.readouterr().err
