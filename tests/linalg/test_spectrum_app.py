"""``backprobe spectrum`` end to end on a tiny problem, checked against dense truth."""

import json

import pytest
import torch
from torch import nn

from backprobe.app.cli import build_parser
from backprobe.app.spectrum import spectrum
from backprobe.linalg import HessianOperator, trace
from backprobe.linalg.curvature.reference import dense_curvature


def test_spectrum_matches_the_dense_hessian(tmp_path):
    from backprobe.app.training import build_model, load_data

    split = load_data("digits", image_size=8)
    model = build_model("softmax_regression", split).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    res = spectrum("softmax_regression", "digits", checkpoint=str(tmp_path / "model.pt"),
                   image_size=8, examples=64, top_k=2, eig_tol=1e-6, trace_method="auto",
                   trace_rtol=0.02,
                   slq_probes=2, slq_steps=10, out=str(tmp_path), progress=False)
    h = dense_curvature("hessian", model.double(), nn.CrossEntropyLoss(),
                        (split.x_train[:64].double(), split.y_train[:64]))
    evals = torch.linalg.eigvalsh(h)
    assert res.top_eigenvalues == pytest.approx(evals[-2:].flip(0).tolist(), rel=1e-4)
    assert abs(res.trace - float(h.trace())) < 5 * res.trace_std_error + 1e-9
    assert res.trace_std_error <= 0.02 * abs(res.trace) or res.trace_matvecs >= 400
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert data["trace"] == res.trace and len(data["density"]) == 1000
    assert (tmp_path / "density.png").stat().st_size > 1000


def test_exact_trace_for_a_piecewise_linear_network():
    from backprobe.app.spectrum import exact_trace
    from backprobe.app.training import build_model, load_data

    split = load_data("digits", image_size=8)
    model = build_model("mnist_cnn", split).eval()
    x, y = split.x_train[:12], split.y_train[:12]
    exact = exact_trace(model, [(x[:5], y[:5]), (x[5:], y[5:])], "hessian")
    h = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    est = trace(h, 400, generator=0)  # Hutchinson: unbiased, its own standard error
    assert abs(exact - est.value) < 4.5 * est.std_error
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    assert exact_trace(tanh, [(x, y)], "hessian") is None  # not piecewise linear


def test_spectrum_is_a_cli_command():
    args = build_parser().parse_args(["spectrum", "--model", "mnist_cnn", "--examples", "8"])
    assert args.func.__module__ == "backprobe.app.spectrum" and args.examples == 8


def test_bad_curvature():
    with pytest.raises(ValueError, match="curvature"):
        spectrum(curvature="fisher", out=None, progress=False)


@pytest.mark.parametrize("argv,match", [
    (["--top-k", "0"], "--top-k must be a positive integer, got 0"),
    (["--examples", "-2"], "--examples must be a positive integer, got -2"),
    (["--slq-probes", "-1"], "--slq-probes must be >= 0"),
])
def test_bad_flags_exit_before_work(argv, match, capsys, tmp_path):
    from backprobe.app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["spectrum", *argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_folder(capsys, tmp_path):
    from backprobe.app.cli import main

    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        main(["spectrum", "--out", str(tmp_path / "f")])
    assert "is a file" in capsys.readouterr().err
