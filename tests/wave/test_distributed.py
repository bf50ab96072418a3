"""Shots sharded over 2 gloo processes give the single-process misfit, gradient and FWI steps."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from backprobe.wave.distributed import all_reduce_sum, init_from_env, rank_and_world, shard
from backprobe.wave.fwi import Misfit, fwi, simulate, surface_survey
from backprobe.wave.velocity_models import layered, smooth
from tests._distributed import free_port, torchrun_env

TIMEOUT_S = 240
SHAPE = (14, 24)


def _problem():
    v = layered(SHAPE, dtype=torch.float64)
    survey = surface_survey(SHAPE, dx=10.0, dt=1e-3, nt=120, freq=20.0, shots=5,
                            space_order=4, pml_width=6, dtype=torch.float64)
    return v, survey, simulate(v, survey), smooth(v, 2.0)


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    torchrun_env(rank, world, port)
    try:
        assert init_from_env("gloo")
        assert rank_and_world() == (rank, world)
        v, survey, d, v0 = _problem()
        misfit = Misfit(survey, d, shots_per_batch=2)
        f, g = misfit(v0)
        res = fwi(v0, survey, d, iterations=2, lower=1400.0, upper=4300.0)
        torch.save({"shots": misfit.shots, "f": f, "g": g, "v": res.v, "history": res.history},
                   os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_shard_partitions_in_order():
    for n in (0, 1, 5, 7):
        for world in (1, 2, 3):
            parts = [list(shard(n, r, world)) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard(4, 2, 2)
    with pytest.raises(ValueError, match="n must be"):
        shard(-1, 0, 1)


def test_single_process_collectives_are_no_ops():
    assert rank_and_world() == (0, 1)
    t = torch.arange(3.0)
    assert all_reduce_sum(t) is t and torch.equal(t, torch.arange(3.0))


def test_two_gloo_processes_match_single_process(tmp_path):
    ctx = mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"workers did not finish within {TIMEOUT_S} s")
    v, survey, d, v0 = _problem()
    f, g = Misfit(survey, d)(v0)
    ref = fwi(v0, survey, d, iterations=2, lower=1400.0, upper=4300.0)
    out = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert out[0]["shots"] == [0, 1, 2] and out[1]["shots"] == [3, 4]
    scale = float(g.abs().max())
    for o in out:
        assert o["f"] == pytest.approx(f, rel=1e-12)
        torch.testing.assert_close(o["g"], g, rtol=1e-10, atol=1e-13 * scale)
        assert o["history"] == pytest.approx(ref.history, rel=1e-10)
        torch.testing.assert_close(o["v"], ref.v, rtol=1e-10, atol=1e-8)
    # Every process took exactly the same steps.
    assert torch.equal(out[0]["v"], out[1]["v"])
