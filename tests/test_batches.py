from collections import namedtuple

import torch

from lorax_core._batches import to_device

Pair = namedtuple("Pair", ["x", "y"])


def test_every_tensor_moves_and_containers_keep_their_type() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    batch = {"a": x, "b": [x, (x, "text")], "c": Pair(x, 3), "d": None}
    moved = to_device(batch, torch.device("meta"))
    assert moved["a"].device.type == "meta" and moved["a"].shape == (2, 3)
    assert isinstance(moved["b"], list) and isinstance(moved["b"][1], tuple)
    assert moved["b"][0].device.type == "meta" and moved["b"][1][0].device.type == "meta"
    assert moved["b"][1][1] == "text"
    assert isinstance(moved["c"], Pair) and moved["c"].x.device.type == "meta" and moved["c"].y == 3
    assert moved["d"] is None
    assert batch["a"].device.type == "cpu"  # the input is left as it was


def test_a_tensor_already_on_the_device_is_not_copied() -> None:
    x = torch.ones(3)
    assert to_device(x, "cpu") is x
    assert to_device({"x": x}, "cpu")["x"] is x
