"""The vision MACs model against hand counts on a small net with every shape asymmetric (kernel 3×2, a 6×4
output map, a depthwise conv, a Linear applied to 24 positions), and the FLOPs-target solver at its edges."""

from __future__ import annotations

import pytest
from torch import nn

from osscar.vision.adapters import PruneUnit
from osscar.vision.flops import LayerShape, keep_for_fraction, layer_shapes, macs, model_macs, solve_keep_counts


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=(3, 2), padding=(1, 0))  # (3, 6, 5) -> (8, 6, 4)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.tokens = nn.Linear(4, 5)  # on (24 positions, 4)
        self.head = nn.Linear(5, 10)

    def forward(self, x):
        x = self.conv3(self.conv2(self.conv1(x)))  # (n, 4, 6, 4)
        x = self.tokens(x.flatten(2).transpose(1, 2))  # (n, 24, 5)
        return self.head(x.mean(1))


SHAPES = {"conv1": LayerShape("conv", 3, 8, 1, 6, 24), "conv2": LayerShape("conv", 8, 8, 8, 9, 24),
          "conv3": LayerShape("conv", 8, 4, 1, 1, 24), "tokens": LayerShape("linear", 4, 5, 1, 1, 24),
          "head": LayerShape("linear", 5, 10, 1, 1, 1)}
DENSE = 8 * 3 * 6 * 24 + 8 * 1 * 9 * 24 + 4 * 8 * 1 * 24 + 5 * 4 * 24 + 10 * 5  # 6482
UNIT = PruneUnit(consumer="conv3", producer="conv1", producer_bn="", between=(("conv2", ""),))


def test_layer_shapes_and_dense_macs():
    net = Net().train()
    assert layer_shapes(net, (3, 6, 5)) == SHAPES
    assert net.training  # the mode is restored
    assert macs(SHAPES) == model_macs(net, (3, 6, 5)) == DENSE == 6482


def test_macs_under_hypothetical_widths_match_a_sliced_net():
    kept3 = 3 * 3 * 6 * 24 + 3 * 1 * 9 * 24 + 4 * 3 * 1 * 24 + 5 * 4 * 24 + 10 * 5  # conv1 out, conv2 (3 groups), conv3 in
    assert macs(SHAPES, [UNIT], {"conv3": 3}) == kept3
    assert macs(SHAPES, [UNIT], {}) == macs(SHAPES, [UNIT], None) == DENSE  # a unit without a count keeps its width
    sliced = Net()
    sliced.conv1, sliced.conv2, sliced.conv3 = (nn.Conv2d(3, 3, (3, 2), padding=(1, 0)),
                                                nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Conv2d(3, 4, 1))
    assert model_macs(sliced, (3, 6, 5)) == kept3


def test_keep_for_fraction_rounds_and_keeps_one():
    assert keep_for_fraction({"a": 8, "b": 3, "c": 1}, 0.5) == {"a": 4, "b": 2, "c": 1}  # round(1.5) = 2
    assert keep_for_fraction({"a": 8, "b": 3}, 0.99) == {"a": 1, "b": 1}
    assert keep_for_fraction({"a": 8}, 0.0) == {"a": 8}


def test_solve_keep_counts_is_the_smallest_fraction_that_reaches_the_target():
    keep, f, achieved = solve_keep_counts(SHAPES, [UNIT], {"conv3": 8}, 0.3)
    assert keep == {"conv3": 5}  # reduction with 4 of 8 channels kept 0.46, 5: 0.34, 6: 0.23
    assert achieved == pytest.approx(1 - macs(SHAPES, [UNIT], {"conv3": 5}) / DENSE)
    assert 0.3125 < f < 0.3126  # round((1 - f)·8) = 5 first for f > 0.3125 (round(5.5) is 6)
    exact = 1 - macs(SHAPES, [UNIT], {"conv3": 5}) / DENSE
    assert solve_keep_counts(SHAPES, [UNIT], {"conv3": 8}, exact)[0] == {"conv3": 5}  # a target met exactly is met
    one = 1 - macs(SHAPES, [UNIT], {"conv3": 1}) / DENSE
    keep, _, achieved = solve_keep_counts(SHAPES, [UNIT], {"conv3": 8}, one)  # exactly the most reachable
    assert keep == {"conv3": 1} and achieved == pytest.approx(one)
    with pytest.raises(ValueError, match=f"flops_fraction={one + 0.01} is unreachable"):
        solve_keep_counts(SHAPES, [UNIT], {"conv3": 8}, one + 0.01)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="flops_fraction must be in \\(0, 1\\)"):
            solve_keep_counts(SHAPES, [UNIT], {"conv3": 8}, bad)


def test_a_unit_without_a_count_does_not_stop_the_others():
    head_unit = PruneUnit(consumer="head", producer="tokens", producer_bn="")  # tokens' 5 outputs feed head
    dense_convs = 8 * 3 * 6 * 24 + 8 * 1 * 9 * 24 + 4 * 8 * 1 * 24
    assert macs(SHAPES, [UNIT, head_unit], {"head": 3}) == dense_convs + 3 * 4 * 24 + 10 * 3  # UNIT has no count
