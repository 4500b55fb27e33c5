"""Actions -> hyperparameters: log2 deltas, the full step, the hard bounds, the discrete menu."""
import math

import numpy as np
import pytest

from envs.actions import ActionMap
from trainers.config import ActionConfig, HparamBounds
from trainers.session import Hparams

BOUNDS = HparamBounds(lr=(1e-5, 1e-1), weight_decay=(1e-4, 0.5), grad_clip=(0.05, 10.0))
START = Hparams(1e-3, 0.01, 1.0)


def test_a_full_box_action_doubles_or_halves_and_zero_holds():
    m = ActionMap(ActionConfig(mode="box", max_log2_step=1.0), BOUNDS)
    assert m.apply(np.zeros(3), START) == START
    up = m.apply(np.array([1.0, -1.0, 0.5]), START)
    assert up.lr == pytest.approx(2e-3) and up.weight_decay == pytest.approx(0.005)
    assert up.grad_clip == pytest.approx(math.sqrt(2))


def test_box_actions_are_clipped_to_one_step_and_the_result_to_the_bounds():
    m = ActionMap(ActionConfig(mode="box", max_log2_step=2.0), BOUNDS)
    big = m.apply(np.array([50.0, 0.0, 0.0]), START)  # clipped to 1 -> 2**2
    assert big.lr == pytest.approx(4e-3)
    edge = m.apply(np.array([1.0, 1.0, 1.0]), Hparams(0.09, 0.4, 9.0))
    assert (edge.lr, edge.weight_decay, edge.grad_clip) == (0.1, 0.5, 10.0)
    with pytest.raises(ValueError, match="3 entries"):
        m.apply(np.zeros(2), START)


def test_discrete_actions_index_the_menu():
    menu = ((0, 0, 0), (1, 0, 0), (0, -1, 0))
    m = ActionMap(ActionConfig(mode="discrete", menu=menu), BOUNDS)
    assert m.space.n == 3
    assert m.apply(1, START).lr == pytest.approx(2e-3)
    assert m.apply(np.array([2]), START).weight_decay == pytest.approx(0.005)
    with pytest.raises(ValueError, match="outside the menu"):
        m.apply(3, START)


def test_describe_is_what_an_agent_folder_needs_to_map_actions_alike():
    d = ActionMap(ActionConfig(mode="box", max_log2_step=0.5), BOUNDS).describe()
    assert d["mode"] == "box" and d["max_log2_step"] == 0.5 and d["menu"] is None
    assert d["bounds"]["lr"] == [1e-5, 1e-1] and d["hparams"] == ["lr", "weight_decay", "grad_clip"]
