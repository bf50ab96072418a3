"""Saved-bytes measurement: per storage, parameters excluded, attributed per layer."""

import torch
from torch import nn

import backprobe


def test_storage_counted_once_and_parameters_excluded():
    w = torch.randn(5, 5, requires_grad=True)
    x = torch.randn(4, 5, requires_grad=True)
    with backprobe.saved_tensors([w]) as log:
        y = x @ w  # saves x (and w, excluded)
        (y * x).sum()  # saves y and x again: x counted once
    assert log.bytes == x.numel() * 4 + y.numel() * 4


def test_per_layer_attribution_sums_to_total():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    loss = nn.CrossEntropyLoss()
    total = backprobe.saved_activation_bytes(model, x, y, loss)
    per_layer = backprobe.saved_activation_bytes(model, x, y, loss, per_layer=True)
    assert sum(per_layer.values()) == total
    assert "0" not in per_layer  # the conv keeps only its input, the batch: not counted
    assert per_layer["1"] == 2 * 4 * 6 * 6 * 4  # ReLU keeps its output (the Linear's input too)
