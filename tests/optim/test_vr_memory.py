"""Tests for backprobe.optim.vr_memory: the table-memory calculator on storage's own rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.app import models
from backprobe.optim import storage as storage_mod
from backprobe.optim.storage import Dense, Factored, LowRank, Partition
from backprobe.optim.vr_memory import (
    parse_storage,
    storage_bytes,
    storage_name,
    storage_numbers,
    storage_units,
)


def tiny() -> nn.Module:
    """conv 3x2x2x2 (24 + 3), BN (6), Linear 12->5 (60 + 5), Linear 5->4 no bias (20)."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 5), nn.ReLU(),
        nn.Linear(5, 4, bias=False),
    )


# conv weight is O x I = 3 x 8; rank r costs min(r * 11, 24)
TINY = [
    (Dense(), "naive", 24 + 3 + 6 + 65 + 20),
    (Factored(), "normal", 24 + 3 + 6 + (12 + 5) + (5 + 4)),
    (LowRank(1), "rank1", 11 + 3 + 6 + 17 + 9),
    (LowRank(2), "rank2", 22 + 3 + 6 + 17 + 9),
    (LowRank(3), "rank3", 24 + 3 + 6 + 17 + 9),  # 33 >= 24: conv weight dense
    (Partition(4), "partition4", 118),
    (Partition(4, LowRank(1)), "rank1+partition4", 11 + 3 + 6 + (17 + 5) + 9),
    (Partition(4, LowRank(2)), "partition4+rank2", 22 + 3 + 6 + (34 + 5) + 18),
]


@pytest.mark.parametrize("spec,text,expected", TINY)
def test_counting_rules_on_a_tiny_net(spec, text, expected):
    model = tiny()
    by_object = storage_numbers(model, spec)
    assert by_object == storage_numbers(model, text)
    assert list(by_object) == [n for n, _ in model.named_parameters()]
    assert sum(by_object.values()) == expected


def test_factored_linear_puts_everything_on_the_weight():
    counts = storage_numbers(tiny(), "normal")
    assert counts["3.weight"] == 17 and counts["3.bias"] == 0 and counts["5.weight"] == 9
    assert counts["0.weight"] == 24 and counts["1.weight"] == 3


def test_units_and_bytes():
    model = tiny()
    assert storage_units(10, "naive") == 10
    assert storage_units(10, Partition(4)) == 3 and storage_units(8, "partition4") == 2
    assert storage_bytes(model, 10, "partition4") == 3 * 118 * 4
    assert storage_bytes(model, 10, "partition4", torch.float64) == 3 * 118 * 8
    assert storage_bytes(model, 10, "rank1") == 10 * 46 * 4
    assert storage_bytes(model, 1, Factored(), torch.bfloat16) == 59 * 2


def test_frozen_and_shared_parameters():
    lin = nn.Linear(3, 2)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert storage_numbers(model, "naive") == {"0.weight": 6, "0.bias": 2}
    lin.bias.requires_grad_(False)
    assert storage_numbers(model, "naive") == {"0.weight": 6}
    assert storage_numbers(model, "normal") == {"0.weight": 5}


def test_bad_specs():
    with pytest.raises(ValueError, match="Factored"):
        storage_numbers(tiny(), Partition(4, Factored()))
    with pytest.raises(ValueError, match="Factored"):
        parse_storage("normal+partition128")
    with pytest.raises(ValueError, match="nest"):
        parse_storage(Partition(4, Partition(2)))
    for text in ("rank0", "partition0", "sparse", "", "rank1+rank2"):
        with pytest.raises(ValueError):
            parse_storage(text)
    with pytest.raises(TypeError, match="storage must be"):
        parse_storage(3)
    with pytest.raises(TypeError, match="rank"):
        parse_storage(LowRank(1.5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.Module"):
        storage_numbers("lenet5", "naive")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_examples"):
        storage_bytes(tiny(), 0, "naive")
    with pytest.raises(TypeError, match="dtype"):
        storage_bytes(tiny(), 1, "naive", "float32")  # type: ignore[arg-type]


def test_spec_strings_round_trip():
    assert parse_storage("rank1+partition128") == Partition(128, LowRank(1))
    assert parse_storage("Partition-128") == Partition(128, Dense())
    for text in ("naive", "normal", "rank4", "partition64", "rank2+partition32"):
        assert storage_name(parse_storage(text)) == text


def test_real_storage_specs_pass_through():
    for spec in (Dense(), LowRank(2), Partition(8, LowRank(1))):
        assert parse_storage(spec) is spec


def test_storage_spec_is_deprecated():
    from backprobe.optim import vr_memory

    with pytest.warns(DeprecationWarning, match="storage"):
        spec_type = vr_memory.StorageSpec
    assert parse_storage("rank1+partition128") == spec_type("lowrank", 1, 128)
    assert spec_type("dense") == Dense() and spec_type("factored") == Factored()


@pytest.mark.parametrize("storage", [
    storage_mod.Dense(), storage_mod.Factored(), storage_mod.LowRank(1), storage_mod.LowRank(3),
    storage_mod.Partition(5), storage_mod.Partition(4, storage_mod.LowRank(1)),
], ids=repr)
def test_saga_holds_exactly_the_calculated_bytes(storage):
    """The bytes the optimizer's tables hold after a step equal the calculator's figure."""
    from backprobe.optim import SAGA

    torch.manual_seed(0)
    model = models.lenet5(1, 10, 28)
    n = 23
    opt = SAGA(model.parameters(), lr=0.01, num_examples=n, storage=storage)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    with opt.record(model):
        nn.functional.cross_entropy(model(x), y).backward()
    opt.step(torch.tensor([0, 3, 4, 9, 17, 22]))
    assert opt.memory()["table"] == storage_bytes(model, n, storage)
