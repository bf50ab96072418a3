"""DistributedDataParallel training on 2 gloo processes matches single-process training."""

import json
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from backprobe.app.cli import main
from backprobe.app.distributed import shard
from backprobe.app.training import TrainConfig, train
from tests._distributed import free_port, torchrun_env

STEPS = 3
TIMEOUT_S = 240


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    torchrun_env(rank, world, port)
    common = ["train", "--model", "mnist_cnn", "--data", "digits", "--batch-size", "30",
              "--epochs", "1", "--max-steps", str(STEPS), "--ddp", "--no-progress"]
    try:
        for spec in ("exact", "probe:16"):
            name = spec.replace(":", "_")
            main([*common, "--estimator", spec, "--json", os.path.join(tmp, f"{name}.json"),
                  "--save", os.path.join(tmp, f"{name}.pt")])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_shard_splits_global_batch():
    idx = torch.arange(7)
    parts = [shard(idx, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(parts), idx)
    assert {len(p) for p in parts} == {3, 4}


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    ctx = mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    # Single process on the same global batches (rank 0 of the DDP run uses the same seeds).
    ref = train(TrainConfig(estimator="exact", batch_size=30, epochs=1, max_steps=STEPS))
    ddp_state = torch.load(tmp_path / "exact.pt")
    for key, value in ref.model_obj.state_dict().items():
        torch.testing.assert_close(ddp_state[key], value, rtol=1e-5, atol=1e-6)
    for name in ("exact", "probe_16"):
        log = json.loads((tmp_path / f"{name}.json").read_text())
        assert log["world_size"] == 2 and log["steps"] == STEPS
        assert len(log["train_loss"]) == 1 and log["train_loss"][0] > 0
        assert 0.0 <= log["test_accuracy"] <= 1.0
    probe = json.loads((tmp_path / "probe_16.json").read_text())
    assert probe["estimator"] == "probe:16"
    assert probe["saved_activation_bytes"] < probe["exact_saved_activation_bytes"]
