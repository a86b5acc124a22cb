"""BanditLog: validation names the bad field; logs are read-only; split is by time."""

from __future__ import annotations

import numpy as np
import pytest

from serendip.errors import ConfigError, DataError
from serendip.explore import BanditLog


def tiny(**overrides: object) -> BanditLog:
    values: dict[str, object] = dict(
        action=[0, 1, 0, 2],
        reward=[1.0, 0.0, 0.0, 1.0],
        pscore=[0.5, 0.25, 0.5, 0.25],
        n_actions=3,
        position=[0, 1, 1, 0],
        n_positions=2,
        context=np.arange(8.0).reshape(4, 2),
        timestamp=[30.0, 10.0, 20.0, 10.0],
    )
    values.update(overrides)
    return BanditLog(**values)


def test_defaults_fill_optional_arrays():
    log = BanditLog(action=[1, 0], reward=[0, 1], pscore=[1, 0.5], n_actions=2)
    assert len(log) == 2
    assert log.position.tolist() == [0, 0] and log.n_positions == 1
    assert log.context.shape == (2, 0) and log.action_context.shape == (2, 0)
    assert log.timestamp.tolist() == [0.0, 1.0]
    assert log.action.dtype == np.int64 and log.reward.dtype == np.float64


def test_arrays_are_read_only_copies():
    action = np.array([0, 1, 0, 2])
    log = tiny(action=action)
    action[0] = 2
    assert log.action[0] == 0
    with pytest.raises(ValueError):
        log.reward[0] = 5.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward": [1.0, 0.0, 0.0]}, r"BanditLog.reward must have shape \(4,\), got \(3,\)"),
        ({"pscore": [0.5, 0.0, 0.5, 0.25]}, r"BanditLog.pscore\[1\] = 0.0 is outside \(0, 1\]"),
        ({"pscore": [0.5, 1.5, 0.5, 0.25]}, r"BanditLog.pscore\[1\] = 1.5 is outside"),
        ({"action": [0, 3, 0, 2]}, r"BanditLog.action\[1\] = 3 is outside \[0, 3\)"),
        ({"action": [0, -1, 0, 2]}, r"BanditLog.action\[1\] = -1"),
        ({"action": [0, 1.5, 0, 2]}, r"BanditLog.action\[1\] = 1.5 is not an integer"),
        ({"position": [0, 2, 0, 0]}, r"BanditLog.position\[1\] = 2 is outside \[0, 2\)"),
        ({"reward": [1.0, np.nan, 0.0, 1.0]}, r"BanditLog.reward\[1\] = nan is not finite"),
        ({"context": np.ones((3, 2))}, r"BanditLog.context must have shape \(4, 2\)"),
        ({"context": np.ones(4)}, r"BanditLog.context must be 2-D"),
        ({"action_context": np.ones((2, 1))}, r"BanditLog.action_context must have shape \(3, 1\)"),
        ({"n_actions": 0}, r"BanditLog.n_actions must be a positive integer, got 0"),
        ({"n_positions": 1.5}, r"BanditLog.n_positions must be a positive integer, got 1.5"),
        ({"timestamp": [0.0, np.inf, 1.0, 2.0]}, r"BanditLog.timestamp\[1\] = inf"),
    ],
)
def test_validation_names_the_bad_field(overrides, message):
    with pytest.raises(DataError, match=message):
        tiny(**overrides)


def test_float_actions_with_integer_values_are_accepted():
    assert tiny(action=[0.0, 1.0, 0.0, 2.0]).action.tolist() == [0, 1, 0, 2]


def test_split_by_time_keeps_order_and_ties_by_row():
    train, test = tiny().split(0.5)
    # timestamps 30, 10, 20, 10 -> time order rows 1, 3, 2, 0
    assert train.timestamp.tolist() == [10.0, 10.0]
    assert train.action.tolist() == [1, 2]
    assert test.timestamp.tolist() == [20.0, 30.0]
    assert test.context.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert (train.n_actions, train.n_positions) == (3, 2)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_split_share_out_of_range(share):
    with pytest.raises(ConfigError, match=f"train_share must be in \\(0, 1\\), got {share}"):
        tiny().split(share)


def test_split_leaving_a_side_empty():
    with pytest.raises(DataError, match="leaves one side empty"):
        tiny().split(0.1)
