"""LoRA adapters (peft) in a session and gradient accumulation through DeepSpeed's config: a LoRA
tail computes what peft's own model computes, replays bit-identically from a snapshot and saves
as a plain model; 4 accumulated micro-batches make the step one batch of their union makes; and an
environment shares one engine between instances that differ only in accumulation."""
import pytest
import torch

from trainers.config import DatasetSpec, LoraSpec, SessionConfig, parse_config
from trainers.data import build_task_data
from trainers.session import FineTuneSession, Hparams

# pytest-xdist (bash test.sh): this file's module fixtures are built once, in one worker
pytestmark = pytest.mark.xdist_group("test_lora_and_accumulation")

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
K = 2  # trainable (adapted) last layers of SmolLM2's 30


@pytest.fixture(scope="module")
def lora_tail():
    cfg = SessionConfig(model="smollm2-135m", device="cpu", micro_batch_size=4, seq_len=48, trainable_last_layers=K,
                        frozen_prefix=True, lora=LoraSpec(rank=4))
    session = FineTuneSession(cfg)
    spec = DatasetSpec(kind="bbc_topic", max_train_examples=24, prompt_template=CHAT)
    data = build_task_data("t", spec, session.tokenizer, 48, 8, 8)
    yield session, data, session.prepare(data)
    session.close()


def _trained(session, cached, steps=3):
    session.reset_to_base(0)
    session.use_data(cached, 0)
    session.set_hparams(Hparams(3e-3, 0.0, 1.0))
    return session.train(steps)


def test_only_the_adapters_train_and_snapshots_hold_only_them(lora_tail):
    session, _, cached = lora_tail
    names = [n for n, p in session.engine.module.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 7 * K  # A and B on the 7 projections of each adapted layer
    snap = session.snapshot()
    assert set(snap.module) == {n for n in session.engine.module.state_dict() if "lora_" in n}


def test_lora_tail_loss_equals_peft_models_loss_on_the_same_batch(lora_tail):
    from peft import LoraConfig, get_peft_model

    from trainers.models import load_model_and_tokenizer

    session, data, cached = lora_tail
    _trained(session, cached)  # lora_B is no longer zero: the adapters change the output
    full, _ = load_model_and_tokenizer("smollm2-135m")
    total = len(full.model.layers)
    ours = session.engine.module.state_dict()
    peft_model = get_peft_model(full, LoraConfig(r=4, lora_alpha=8, target_modules=list(LoraSpec(rank=4).target_modules),
                                                 layers_to_transform=list(range(total - K, total)), layers_pattern="layers"))
    theirs = peft_model.state_dict()
    moved = {}
    for name, tensor in ours.items():
        if "lora_" in name:
            idx, rest = name[len("tail.model.layers."):].split(".", 1)
            moved[f"base_model.model.model.layers.{int(idx) + total - K}.{rest}"] = tensor
    assert set(moved) == {k for k in theirs if "lora_" in k}
    peft_model.load_state_dict(moved, strict=False)
    assert any(float(v.abs().max()) > 0 for k, v in moved.items() if "lora_B" in k)
    peft_model.eval()
    session.engine.eval()
    with torch.no_grad():
        for s in range(0, 8, 4):
            batch, tail_batch = data.validation.select(slice(s, s + 4)), cached.validation.select(slice(s, s + 4))
            expected = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
            got = session.engine(**session.engine_inputs(tail_batch)).loss
            assert float(got) == pytest.approx(float(expected), rel=1e-4)
    # the base model without adapters gives another loss: the comparison can tell them apart
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    assert abs(float(plain) - float(expected)) > 1e-4


def test_lora_snapshot_restore_replays_bit_identically(lora_tail):
    session, _, cached = lora_tail
    _trained(session, cached, 2)
    snap = session.snapshot()
    first = session.train(3)
    state = {k: v.clone() for k, v in session.engine.module.state_dict().items() if "lora_" in k}
    session.restore(snap)
    second = session.train(3)
    assert [m.loss for m in first] == [m.loss for m in second]
    assert [m.grad_norm for m in first] == [m.grad_norm for m in second]
    again = session.engine.module.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_saved_lora_model_is_a_plain_model_with_the_adapters_folded_in(lora_tail, tmp_path):
    from transformers import AutoModelForCausalLM

    session, data, cached = lora_tail
    _trained(session, cached)
    session.use_data(cached, 0)
    expected = session.evaluate("validation").loss
    session.save_model(str(tmp_path / "m"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not any("lora" in k for k in model.state_dict())
    batch = data.validation
    with torch.no_grad():
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    assert float(loss) == pytest.approx(expected, rel=1e-3)  # token-weighted over one batch of all 8 rows


# ---------------------------------------------------------------- gradient accumulation
def _lm_data(tokenizer):
    """Text chunks that fill every position: each micro-batch has as many label tokens as any
    other, so the mean of micro-batch means is the union's mean."""
    data = build_task_data("lm", DatasetSpec(kind="bbc_lm", topic="tech", max_train_examples=8), tokenizer, 64, 8, 8)
    full = data.train.attention_mask.all(dim=1)
    return type(data)(data.name, data.train.select(torch.nonzero(full).flatten()), data.validation, data.test, data.metric)


def _one_step(cfg: SessionConfig, data, accumulation=None):
    s = FineTuneSession(cfg)
    for m in s.engine.module.modules():  # dropout masks depend on the batch's shape: none here
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    try:
        s.reset_to_base(0)  # (back to the accumulation the engine was built with)
        if accumulation:
            s.set_gradient_accumulation(accumulation)
        s.use_data(data, 0)
        s.set_hparams(Hparams(1e-3, 0.0, 10.0))
        before = {k: v.clone() for k, v in s.engine.module.state_dict().items()}
        metrics = s.train(1)
        weights = {k: v.clone() for k, v in s.engine.module.state_dict().items() if not torch.equal(v, before[k])}
        return metrics[0], weights  # the tensors the step changed
    finally:
        s.close()


def test_four_accumulated_micro_batches_make_the_step_of_their_union():
    base = dict(model="tiny-gpt", device="cpu", seq_len=64)
    union_cfg = SessionConfig(**base, micro_batch_size=32)
    probe = FineTuneSession(union_cfg)
    data = _lm_data(probe.tokenizer)
    probe.close()
    assert len(data.train) >= 32
    union, w_union = _one_step(union_cfg, data)
    accumulated, w_acc = _one_step(SessionConfig(**base, micro_batch_size=8, gradient_accumulation_steps=4), data)
    live, w_live = _one_step(SessionConfig(**base, micro_batch_size=8), data, accumulation=4)  # changed on a live engine
    single, w_single = _one_step(SessionConfig(**base, micro_batch_size=8), data)
    assert accumulated.tokens == union.tokens == 4 * single.tokens
    assert accumulated.loss == pytest.approx(union.loss, rel=1e-5)
    assert accumulated.grad_norm == pytest.approx(union.grad_norm, rel=1e-4)
    # Adam's first step moves each weight by about lr * sign(grad): where a gradient is ~eps, the order of
    # the float sums decides it. So: almost every weight agrees to 1e-6, and none differs by a tenth of lr
    lr = 1e-3
    assert w_union and set(w_acc) == set(w_live) == set(w_single) == set(w_union)  # the same tensors moved
    moved = sum(w.numel() for w in w_union.values())
    off = lambda ws: sum(int((ws[k] - w_union[k]).abs().gt(1e-6).sum()) for k in w_union)  # noqa: E731
    assert off(w_acc) <= 1e-4 * moved
    for k in w_union:
        torch.testing.assert_close(w_acc[k], w_union[k], rtol=0, atol=0.1 * lr)
        assert torch.equal(w_live[k], w_acc[k])
    assert off(w_single) >= 100 * 1e-4 * moved  # one micro-batch of the four is another step
    assert any(not torch.allclose(w_single[k], w_union[k], rtol=0, atol=0.1 * lr) for k in w_union)


def test_an_environment_shares_an_engine_across_accumulation_and_not_across_adapters(monkeypatch):
    import envs.finetune_env as fe

    inst = {"dataset": {"kind": "arithmetic", "max_train_examples": 64}, "total_steps": 4}
    cfg = parse_config({
        "name": "engines", "session": {"model": "tiny-gpt", "device": "cpu", "micro_batch_size": 4},
        "episode": {"total_steps": 4, "decision_interval": 2, "eval_examples": 8, "test_examples": 8},
        "train": [{"name": "a1", **inst}, {"name": "a4", **inst, "gradient_accumulation_steps": 4},
                  {"name": "lora", **inst, "lora": {"rank": 4, "target_modules": ["c_attn"]}},
                  {"name": "lora8", **inst, "lora": {"rank": 8, "target_modules": ["c_attn"]}}]})
    env = fe.FineTuneEnv(cfg)
    seen = {}
    for name in ("a1", "a4", "lora", "a4"):
        env.reset(seed=0, options={"instance": name})
        seen[name] = env.session
        assert env.session.gradient_accumulation_steps == (4 if name == "a4" else 1)
        env.step(env.action_space.sample() * 0)
    assert seen["a1"] is seen["a4"] and seen["lora"] is not seen["a1"] and len(env.sessions) == 2
    monkeypatch.setattr(fe, "MAX_ENGINES", 2)
    env.reset(seed=0, options={"instance": "lora8"})  # a third configuration: the least recently used goes
    assert len(env.sessions) == 2 and seen["lora"] not in env.sessions.values()
    assert seen["a1"] in env.sessions.values()
    shared = fe.FineTuneEnv(cfg, session=env.sessions)  # engines another environment built: not its to close
    shared.reset(seed=0, options={"instance": "lora"})
    assert all(s in shared.sessions.values() for s in (seen["a1"], env.session))


def test_a_restore_brings_back_the_accumulation_of_its_snapshot():
    s = FineTuneSession(SessionConfig(model="tiny-gpt", device="cpu", micro_batch_size=4))
    try:
        s.set_gradient_accumulation(2)
        snap = s.snapshot()
        s.set_gradient_accumulation(8)
        s.restore(snap)
        assert s.gradient_accumulation_steps == 2
    finally:
        s.close()
