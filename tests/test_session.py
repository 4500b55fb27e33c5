"""The session runs a real DeepSpeed engine, and what a controller sets reaches its optimizer."""
import math

import deepspeed
import pytest
import torch

from trainers.config import DatasetSpec, SessionConfig
from trainers.data import build_task_data
from trainers.session import FineTuneSession, Hparams

# pytest-xdist (bash test.sh): this file's module fixtures are built once, in one worker
pytestmark = pytest.mark.xdist_group("test_session")


@pytest.fixture()
def session(tiny_session, tiny_cfg):
    data = build_task_data("t", DatasetSpec(kind="bbc_lm", topic="tech"), tiny_session.tokenizer, 32, 8, 8)
    tiny_session.reset_to_base(0)
    tiny_session.use_data(data, 0)
    return tiny_session


def _params(s):
    return [p.detach().clone() for p in s.engine.module.parameters()]


def test_engine_is_a_real_deepspeed_engine(session):
    assert isinstance(session.engine, deepspeed.DeepSpeedEngine)
    m = session.train(2)
    tokens = session.cfg.micro_batch_size * 32
    assert len(m) == 2 and all(math.isfinite(x.loss) and x.grad_norm > 0 and x.tokens == tokens for x in m)


def test_lr_reaches_optimizer(session):
    session.set_hparams(Hparams(lr=0.0, weight_decay=0.0, grad_clip=1.0))
    before = _params(session)
    session.train(1)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(session)))
    session.set_hparams(Hparams(lr=1e-3, weight_decay=0.0, grad_clip=1.0))
    (m,) = session.train(1)
    assert m.lr == 1e-3  # read from the optimizer's param group during the step
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(session)))


def test_weight_decay_reaches_optimizer(session):
    """AdamW decays decoupled from the gradient: two runs differing only in wd differ by lr*wd*p."""
    snap = session.snapshot()
    before = _params(session)
    lr, wd = 1e-2, 0.3
    session.set_hparams(Hparams(lr, 0.0, 1.0))
    session.train(1)
    no_wd = _params(session)
    session.restore(snap)
    session.set_hparams(Hparams(lr, wd, 1.0))
    session.train(1)
    with_wd = _params(session)
    for p0, a, b in zip(before, no_wd, with_wd):
        torch.testing.assert_close(a - b, lr * wd * p0, rtol=1e-3, atol=1e-6)


def test_clipping_threshold_reaches_optimizer(session):
    """Adam's first moment after one step is (1 - beta1) * the clipped gradient."""
    for clip in (0.01, 0.5):
        session.reset_to_base(1)
        session.set_hparams(Hparams(1e-3, 0.0, clip))
        (m,) = session.train(1)
        assert m.grad_norm > clip and m.clipped
        state = session.engine.optimizer.state
        norm = math.sqrt(sum(float(state[p]["exp_avg"].pow(2).sum()) for p in session.engine.module.parameters()))
        assert norm == pytest.approx(0.1 * clip, rel=1e-3)


def test_snapshot_restore_replays_bit_identically(session):
    session.set_hparams(Hparams(3e-3, 0.01, 1.0))
    session.train(2)
    snap = session.snapshot()
    first = [m.loss for m in session.train(5)]
    session.restore(snap)
    second = [m.loss for m in session.train(5)]
    assert first == second


def test_evaluate_reports_loss_and_exact_match(tiny_session):
    data = build_task_data("c", DatasetSpec(kind="bbc_topic"), tiny_session.tokenizer, 32, 16, 16)
    tiny_session.reset_to_base(0)
    tiny_session.use_data(data, 0)
    before = tiny_session.evaluate("validation")
    assert before.metric_name == "exact_match" and 0.0 <= before.metric <= 1.0
    tiny_session.set_hparams(Hparams(1e-2, 0.0, 1.0))
    tiny_session.train(30)
    after = tiny_session.evaluate("validation")
    assert after.loss < before.loss
    assert after.metric_name == "exact_match" and 0.0 <= after.metric <= 1.0


def _first_moment_norm(s) -> float:
    """Norm of Adam's first moment in the torch optimizer that really steps (under ZeRO and bf16
    it sits inside DeepSpeed's wrapper, over the fp32 master copies)."""
    opt = s.engine.optimizer
    while hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return math.sqrt(sum(float(st["exp_avg"].float().pow(2).sum()) for st in opt.state.values()))


@pytest.mark.parametrize("stage,precision", [(1, "fp32"), (2, "fp32"), (0, "bf16")])
def test_other_zero_stages_and_bf16_obey_the_controller_and_replay(stage, precision):
    """The engine is built with clip 1.0 and lr 1e-3: the values set afterwards must be the ones used."""
    cfg = SessionConfig(zero_stage=stage, precision=precision, micro_batch_size=4, seq_len=32)
    s = FineTuneSession(cfg)
    try:
        data = build_task_data("t", DatasetSpec(kind="arithmetic"), s.tokenizer, 32, 8, 8)
        s.reset_to_base(0)
        s.use_data(data, 0)
        s.set_hparams(Hparams(0.0, 0.0, 1.0))
        before = _params(s)
        s.train(1)
        assert all(torch.equal(a, b) for a, b in zip(before, _params(s)))  # lr 0 reached the stepping optimizer
        for clip in (0.01, 0.5):  # ZeRO and bf16 optimizers clip with their own copy of the threshold
            s.reset_to_base(1)
            s.set_hparams(Hparams(1e-3, 0.0, clip))
            (m,) = s.train(1)
            assert m.grad_norm > clip
            assert _first_moment_norm(s) == pytest.approx(0.1 * clip, rel=1e-2)
        s.reset_to_base(0)
        s.use_data(data, 0)
        s.set_hparams(Hparams(1e-3, 0.01, 0.5))
        first = [m.loss for m in s.train(3)]
        assert all(math.isfinite(m.grad_norm) for m in s.train(1))
        s.reset_to_base(0)
        s.use_data(data, 0)
        s.set_hparams(Hparams(1e-3, 0.01, 0.5))
        second = [m.loss for m in s.train(3)]
        assert first == second
    finally:
        s.close()


@pytest.fixture(scope="module", params=["schedulefree_adamw", "prodigy"])
def self_tuning(request, tiny_cfg):
    cfg = tiny_cfg.session.model_copy(update={"optimizer": request.param})
    s = FineTuneSession(cfg, Hparams(1e-4, 0.05, 1.0))
    data = build_task_data("t", DatasetSpec(kind="bbc_lm", topic="tech"), s.tokenizer, 32, 8, 8)
    s.use_data(data, 0)
    return s


def test_a_self_tuning_optimizer_keeps_its_own_lr_and_takes_only_the_clip(self_tuning):
    """One configuration for every instance: the controller's lr and weight decay do not reach
    Schedule-Free or Prodigy (lr 0.0025 and 1.0, weight decay 0, their READMEs' defaults)."""
    from trainers.session import SELF_TUNING

    s = self_tuning
    s.reset_to_base(0)
    own = SELF_TUNING[s.cfg.optimizer]
    assert s.hparams() == Hparams(own["lr"], own["weight_decay"], 1.0)
    s.set_hparams(Hparams(3e-2, 0.3, 0.25))
    assert s.hparams() == Hparams(own["lr"], own["weight_decay"], 0.25)
    before = s.evaluate().loss
    losses = [m.loss for m in s.train(6)]
    assert all(math.isfinite(x) for x in losses) and s.evaluate().loss < before  # it trains
    if s.cfg.optimizer == "prodigy":  # its step-size estimate moved from d0
        assert s.engine.optimizer.param_groups[0]["d"] > 1e-6


def test_a_self_tuning_optimizer_replays_from_a_snapshot(self_tuning):
    """Snapshots carry Prodigy's step-size estimate d and Schedule-Free's averaging state; and
    Schedule-Free evaluates at its averaged weights."""
    s = self_tuning
    s.reset_to_base(0)
    s.train(4)
    opt = s.engine.optimizer
    if s.cfg.optimizer == "schedulefree_adamw":
        train_weights = [p.detach().clone() for p in s.engine.module.parameters()]
        s.evaluate()
        assert not opt.param_groups[0]["train_mode"]  # evaluate() swapped the averaged weights in
        assert any(not torch.equal(a, p) for a, p in zip(train_weights, s.engine.module.parameters()))
    snap = s.snapshot()
    d_before = opt.param_groups[0].get("d")
    first = [m.loss for m in s.train(3)] + [s.evaluate().loss]  # train() swaps them back out
    s.restore(snap)
    assert opt.param_groups[0].get("d") == d_before
    second = [m.loss for m in s.train(3)] + [s.evaluate().loss]
    assert first == second


def test_self_tuning_optimizers_refuse_engines_they_cannot_run_in():
    """Schedule-Free's eval()/train() would swap DeepSpeed's master copies under ZeRO or bf16, and
    ZeRO refuses Prodigy: the config says so (compare then leaves the method out and says why)."""
    from pydantic import ValidationError

    for bad in ({"optimizer": "schedulefree_adamw", "precision": "bf16"}, {"optimizer": "schedulefree_adamw", "zero_stage": 1},
                {"optimizer": "prodigy", "zero_stage": 2}):
        with pytest.raises(ValidationError, match=bad["optimizer"]):
            SessionConfig(**bad)
    from agents.methods import ComparisonSetup, compared

    def self_tuning_envs_left_out(cfg):
        methods = compared(ComparisonSetup(cfg, "unused"))
        return {m.name: r for m in methods if (r := m.ruled_out(cfg)) is not None}
    from trainers.config import load_config

    assert set(self_tuning_envs_left_out(load_config("smollm2_gpu"))) == {"schedulefree_adamw", "prodigy"}
    assert self_tuning_envs_left_out(load_config("smollm2_cpu")) == {}
