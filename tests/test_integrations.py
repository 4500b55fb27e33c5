"""A learned controller inside someone else's training loop (agents/integrations): the committed
tiny agent steering a bare DeepSpeed loop by ask-and-tell, and a real Hugging Face Trainer (with
and without DeepSpeed) through ControllerCallback, on the tiny instance set's real data."""
import json
import math

import numpy as np
import pytest
import torch

from agents.integrations import Hparams, SteppedController, read_schedule, set_engine_hparams
from agents.learners.agent_folder import Controller
from envs.episode import PolicyPlan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.config import REPO_ROOT, ConfigError

# pytest-xdist (bash test.sh): this file's module fixtures are built once, in one worker
pytestmark = pytest.mark.xdist_group("test_integrations")

AGENT = REPO_ROOT / "results" / "agents" / "ppo-tiny-seed0"
INSTANCE = "bbc-tech-lm"  # held out from the agent's training


@pytest.fixture(scope="module")
def env():
    e = FineTuneEnv("tiny", split="all")
    yield e
    e.close()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """accelerate sets torch to every core when OMP_NUM_THREADS is unset; with anything else
    running, two threads per process make steps many times slower (../shared/PLATFORM.md)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)  # TrainingArguments(deepspeed=...) sets it for good
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # a Trainer's DeepSpeed choice lives in accelerate's singletons

@pytest.fixture(scope="module")
def controller():
    return Controller(AGENT)


def bare_loop(env, ctl: SteppedController, steps: int, session_seed: int) -> None:
    """A user's loop on a deepspeed.initialize engine: draw a batch, forward, backward, read the
    gradient norm, step; the controller is asked before and told after every step."""
    session, engine = env.session, env.session.engine
    train = session.data.train
    g = torch.Generator().manual_seed(session_seed)  # the batch order the environment's session draws
    params = [p for p in engine.module.parameters() if p.requires_grad]
    engine.train()
    for step in range(steps):
        set_engine_hparams(engine, ctl.hparams_for(step))
        batch = train.select(torch.randint(0, len(train), (session.cfg.micro_batch_size,), generator=g))
        out = engine(**session.engine_inputs(batch))
        engine.backward(out.loss)
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        engine.step()
        ctl.tell_step(float(out.loss.detach()), norm)
        if ctl.wants_eval(step):
            ctl.tell_eval(session.evaluate("validation").loss)


def test_ask_and_tell_in_a_bare_deepspeed_loop_takes_the_environments_decisions(env, controller, tmp_path):
    """agents.tune's episode and a hand-written loop with the same controller, seed and data: the
    same observations, actions, per-step hyperparameters and losses."""
    from agents.tune import main as tune

    tuned = tune(["--agent", str(AGENT), "--instance", INSTANCE, "--seed", "3", "--no-save-model",
                  "--out", str(tmp_path / "tuned")])
    expected = json.loads((tmp_path / "tuned" / "schedule.json").read_text())
    assert tuned["log"]["schedule"] == expected["schedule"]

    env.reset(seed=3, options={"instance": INSTANCE})
    start = env.session.hparams()
    total = env.total_steps
    ctl = SteppedController(controller, total, start, initial_eval_loss=env.initial_eval.loss,
                            decision_interval=env.cfg.episode.decision_interval)
    bare_loop(env, ctl, total, env.session_seed)

    assert [h.as_dict() for h in ctl.schedule] == expected["schedule"]
    assert ctl.train_loss == expected["train_loss"]
    assert [list(p) for p in ctl.eval_curve] == [list(p) for p in expected["eval_curve"]]
    # and the controller really steered: the schedule changes at every decision, and only there
    lrs = [h.lr for h in ctl.schedule]
    changes = [i for i in range(1, total) if lrs[i] != lrs[i - 1]]
    assert changes == [d["step"] for d in ctl.decisions][1:]


def test_the_environment_observes_what_the_stepped_controller_observes(env, controller):
    """Decision by decision, the environment's observation equals the one ask-and-tell builds
    from the same told values (the observation is one function, envs.features.observe)."""
    env_obs = []
    plan = PolicyPlan(lambda obs: (env_obs.append(obs), controller.act(obs))[1])
    log = run_episode(env, plan, INSTANCE, 5)
    # the environment's first decision acted on the drawn start; replay what it was told
    ctl = SteppedController(controller, len(log["schedule"]), Hparams(**_start_of(env, 5)),
                            initial_eval_loss=log["initial_eval_loss"], decision_interval=env.cfg.episode.decision_interval)
    evals = dict(log["eval_curve"])
    for step in range(len(log["schedule"])):
        ctl.hparams_for(step)
        ctl.tell_step(log["train_loss"][step], log["grad_norm"][step])
        if ctl.wants_eval(step):
            ctl.tell_eval(evals[step + 1])
    got = [np.array(list(d["observation"].values()), dtype=np.float32) for d in ctl.decisions]
    assert len(got) == len(env_obs)
    for a, b in zip(got, env_obs):
        np.testing.assert_array_equal(a, b)
    assert [h.as_dict() for h in ctl.schedule] == log["schedule"]


def _start_of(env, seed):
    env.reset(seed=seed, options={"instance": INSTANCE})
    return env.session.hparams().as_dict()


def test_a_run_five_times_longer_spreads_the_training_decisions(env, controller):
    """5x the training episode's length: the same number of decisions as a training episode,
    evenly spread; the values change only there, each time by exactly the policy's action on the
    last values (so a value can reach a bound only by the policy's own move: nothing else clips or
    drifts it); and the run trains."""
    cfg = controller.env_config
    n_decisions = math.ceil(cfg.episode.total_steps / cfg.episode.decision_interval)
    total = 5 * cfg.episode.total_steps
    env.reset(seed=1, options={"instance": "bbc-sport-lm-small"})
    ctl = SteppedController(controller, total, env.session.hparams(), initial_eval_loss=env.initial_eval.loss)
    assert ctl.decision_interval == math.ceil(total / n_decisions)
    bare_loop(env, ctl, total, env.session_seed)
    assert [d["step"] for d in ctl.decisions] == list(range(0, total, ctl.decision_interval))
    assert len(ctl.decisions) == n_decisions
    assert [d["observation"]["progress"] for d in ctl.decisions] == pytest.approx(
        [i * ctl.decision_interval / total for i in range(n_decisions)])
    previous = ctl.initial
    for d in ctl.decisions:
        assert Hparams(**d["hparams"]) == ctl.actions.apply(d["action"], previous)
        previous = Hparams(**d["hparams"])
    changes = [i for i in range(1, total) if ctl.schedule[i] != ctl.schedule[i - 1]]
    assert set(changes) <= {d["step"] for d in ctl.decisions}
    assert all(math.isfinite(v) for h in ctl.schedule for v in h.as_dict().values())
    assert not ctl.diverged and ctl.eval_curve[-1][1] < ctl.eval_curve[0][1]


def test_ask_and_tell_refuses_misuse(controller):
    ctl = SteppedController(controller, 20, Hparams(1e-3, 0.01, 1.0))
    with pytest.raises(RuntimeError, match="tell_eval"):
        ctl.hparams_for(0)  # no reference evaluation yet
    ctl.tell_eval(5.0)
    with pytest.raises(ValueError, match="asked for step 1"):
        ctl.hparams_for(1)
    ctl.hparams_for(0)
    with pytest.raises(TypeError, match="two numbers"):
        ctl.tell_step(4.0, None)
    ctl.tell_step(4.0, math.inf, skipped=True)  # an fp16 overflow: counted, not observed, not divergence
    assert ctl.steps_done == 1 and not ctl._interval_steps
    for step in range(1, ctl.decision_interval):
        ctl.hparams_for(step)
        ctl.tell_step(4.0, 1.0)
    with pytest.raises(RuntimeError, match="wants_eval"):
        ctl.hparams_for(ctl.decision_interval)  # the interval's evaluation is missing
    ctl.tell_eval(math.nan)  # a non-finite evaluation: diverged, the controller holds from here
    held = ctl.hparams_for(ctl.decision_interval)
    assert ctl.diverged and held == ctl.schedule[-2] and len(ctl.decisions) == 1
    with pytest.raises(ConfigError, match="not an agent folder"):
        SteppedController(REPO_ROOT / "configs", 10, Hparams(1e-3, 0.01, 1.0))


def test_read_schedule_names_what_is_wrong(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"schedule": [{"lr": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0}, {"lr": -1}]}))
    with pytest.raises(ConfigError, match=r"s.json: schedule\[1\]"):
        read_schedule(bad)
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="field 'schedule'"):
        read_schedule(bad)


# ---------------------------------------------------------------- Hugging Face Trainer
def _records(split) -> list[dict]:
    return [{"input_ids": split.input_ids[i], "attention_mask": split.attention_mask[i], "labels": split.labels[i]}
            for i in range(len(split))]


def _trainer(env, tmp_path, callback, deepspeed, steps, start: Hparams, report_to=(), batch=8, accumulation=1,
             lora_rank=None):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from trainers.models import model_path
    from trainers.session import _import_deepspeed, ensure_process_group

    _import_deepspeed("cpu")  # the session's set-up: no shared-memory op to compile on one process
    ensure_process_group("cpu")
    data = env.task_data(env.cfg.instance(INSTANCE))
    model = AutoModelForCausalLM.from_pretrained(model_path("tiny-gpt"))
    if lora_rank:  # a peft model, as most people who fine-tune today give the Trainer
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=32, learning_rate=start.lr, weight_decay=start.weight_decay,
        max_grad_norm=start.grad_clip, lr_scheduler_type="linear",  # a scheduler that would move lr: it must not
        deepspeed=deepspeed, bf16=bool(deepspeed and "bf16" in deepspeed), report_to=list(report_to), use_cpu=True, save_strategy="no", disable_tqdm=True,
        logging_steps=1000, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_records(data.train), callbacks=[callback])
    return trainer, _watch(trainer, callback), data


def _watch(trainer, callback) -> dict[int, set[tuple[float, float, float]]]:
    """What the optimizer that steps holds when it steps, by Trainer step."""
    used: dict[int, set[tuple[float, float, float]]] = {}  # step -> (lr, weight decay, clip) per param group stepped

    def clip_in_force() -> float:  # where the code that clips reads its threshold
        engine = callback._engine
        if engine is None:
            return trainer.args.max_grad_norm
        return getattr(engine.optimizer, "clip_grad", engine._config.gradient_clipping)

    create = trainer.create_optimizer

    def create_and_watch(*a, **k):  # what the optimizer that steps holds when it steps (ZeRO steps one group at a time)
        opt = create(*a, **k)
        if not getattr(opt, "_watched", False):
            opt.register_step_pre_hook(lambda o, *_: used.setdefault(trainer.state.global_step, set()).update(
                (g["lr"], g["weight_decay"], clip_in_force()) for g in o.param_groups))
            opt._watched = True
        return opt

    trainer.create_optimizer = create_and_watch
    return used


DS_CONFIGS = {
    "no deepspeed": None,
    "deepspeed zero 0 fp32": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                              "gradient_clipping": "auto", "zero_optimization": {"stage": 0}},
    "deepspeed zero 2 bf16": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                              "gradient_clipping": "auto", "zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}},
}
SETUPS = {name: (ds, 1) for name, ds in DS_CONFIGS.items()}
SETUPS["no deepspeed, 2 micro-batches per step"] = (None, 2)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_trainer_callback_sets_what_the_optimizer_uses_at_every_step(env, tmp_path, setup):
    from agents.integrations import ControllerCallback
    from agents.integrations.trainer_callback import SCHEDULE_FILE

    start = Hparams(2e-3, 0.02, 0.5)
    cb = ControllerCallback(AGENT, decision_interval=4)
    ds, accumulation = SETUPS[setup]
    trainer, used, data = _trainer(env, tmp_path, cb, ds, 12, start, accumulation=accumulation)
    cb.eval_dataset = _records(data.validation)
    trainer.train()
    assert len(cb.schedule) == 12 and sorted(used) == list(range(12))
    for step, h in enumerate(cb.schedule):  # the linear scheduler never reached a step
        assert {lr for lr, _, _ in used[step]} == {h.lr}
        assert {wd for _, wd, _ in used[step]} == {0.0, h.weight_decay}  # biases and norms: the Trainer's 0 kept
        assert {c for _, _, c in used[step]} == {h.grad_clip}
    assert [d["step"] for d in cb.decisions] == [0, 4, 8]
    assert len({h.lr for h in cb.schedule}) == 3 and len({h.grad_clip for h in cb.schedule}) == 3  # it acted
    assert (cb._engine is not None) == (ds is not None)
    assert all(math.isfinite(g) and g > 0 for g in cb.ctl.grad_norm)  # every step's gradient norm reached it
    saved = json.loads((tmp_path / "out" / SCHEDULE_FILE).read_text())
    assert saved["schedule"] == [h.as_dict() for h in cb.schedule] and len(saved["decisions"]) == 3
    assert read_schedule(tmp_path / "out" / SCHEDULE_FILE) == cb.schedule  # what a replay in the user's loop sets


def test_trainer_callback_steers_a_peft_lora_model_through_deepspeed(env, tmp_path):
    from agents.integrations import ControllerCallback

    start = Hparams(2e-3, 0.02, 0.5)
    cb = ControllerCallback(AGENT, decision_interval=4)
    trainer, used, data = _trainer(env, tmp_path, cb, DS_CONFIGS["deepspeed zero 0 fp32"], 12, start, lora_rank=4)
    cb.eval_dataset = _records(data.validation)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert cb._engine is not None and len(cb.schedule) == 12 and sorted(used) == list(range(12))
    for step, h in enumerate(cb.schedule):
        assert {lr for lr, _, _ in used[step]} == {h.lr} and {c for _, _, c in used[step]} == {h.grad_clip}
    assert len({h.lr for h in cb.schedule}) == 3  # it acted
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)  # only the adapters trained
    assert any("lora_B" in k for k in changed)


def test_trainer_callback_steers_trl_sft_trainer_with_its_own_lora(env, tmp_path):
    """TRL's SFTTrainer, as its docs show it: a prompt/completion dataset (loss on the completion
    only), LoRA through its peft_config argument, DeepSpeed ZeRO 0; the controller sets what the
    optimizer uses at every step, and only the adapters train."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from agents.integrations import ControllerCallback
    from trainers.data import raw_records
    from trainers.models import model_path
    from trainers.session import _import_deepspeed, ensure_process_group

    _import_deepspeed("cpu")
    ensure_process_group("cpu")
    inst = env.cfg.instance("bbc-topic-first-sentence")  # held out from the agent's training
    records = raw_records(inst.dataset)[:96]
    assert set(records[0]) == {"prompt", "completion"}
    path = model_path("tiny-gpt")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    start = Hparams(2e-3, 0.02, 0.5)
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=12, per_device_train_batch_size=8,
                     learning_rate=start.lr, weight_decay=start.weight_decay, max_grad_norm=start.grad_clip,
                     lr_scheduler_type="cosine", deepspeed=DS_CONFIGS["deepspeed zero 0 fp32"], use_cpu=True,
                     report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1000, seed=0,
                     max_length=env.cfg.session.seq_len, completion_only_loss=True,
                     bf16=False)  # SFTConfig's default is bf16, where DeepSpeed ZeRO 0 takes one zero-gradient
    # step at the start lr while it builds its optimizer, before the Trainer's first step
    cb = ControllerCallback(AGENT, decision_interval=4)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                         train_dataset=Dataset.from_list(records), processing_class=tok, callbacks=[cb],
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True))
    used = _watch(trainer, cb)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert cb._engine is not None and len(cb.schedule) == 12 and sorted(used) == list(range(12))
    for step, h in enumerate(cb.schedule):  # the cosine scheduler never reached a step
        assert {lr for lr, _, _ in used[step]} == {h.lr} and {c for _, _, c in used[step]} == {h.grad_clip}
    assert len({h.lr for h in cb.schedule}) == 3  # it acted at each of its three decisions
    assert all(math.isfinite(g) and g > 0 for g in cb.ctl.grad_norm)
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed) and any("lora_B" in k for k in changed)


def test_trainer_and_environment_decide_alike(env, controller, tmp_path):
    """The same controller, instance data, start and budget in FineTuneEnv and in a Trainer. The
    first decision is identical (it sees only the start). Later ones see different batches (the
    Trainer shuffles its own way, dropout draws differ, and it exempts biases and norms from weight
    decay), so their observations agree only roughly; the validation loss they are measured
    against is the same."""
    from agents.integrations import ControllerCallback

    env_obs = []
    log = run_episode(env, PolicyPlan(lambda o: (env_obs.append(o), controller.act(o))[1]), INSTANCE, 7)
    start = Hparams(**_start_of(env, 7))
    cb = ControllerCallback(AGENT, decision_interval=env.cfg.episode.decision_interval)
    trainer, _, data = _trainer(env, tmp_path, cb, DS_CONFIGS["deepspeed zero 0 fp32"], len(log["schedule"]), start,
                                batch=env.cfg.session.micro_batch_size)
    cb.eval_dataset = _records(data.validation)
    trainer.train()
    assert cb.ctl.initial_eval_loss == pytest.approx(log["initial_eval_loss"], rel=1e-5)
    got = [np.array(list(d["observation"].values()), dtype=np.float32) for d in cb.decisions]
    assert len(got) == len(env_obs)
    np.testing.assert_allclose(got[0], env_obs[0], rtol=1e-6)
    assert cb.schedule[0].as_dict() == pytest.approx(log["schedule"][0], rel=1e-6)
    assert [g[0] for g in got] == [o[0] for o in env_obs]  # progress: the same decision points
    for a, b in zip(got[1:], env_obs[1:]):
        np.testing.assert_allclose(a, b, atol=0.35)  # relative losses, log grad norms, bound positions


def test_trainer_callback_logs_the_applied_values_to_mlflow(env, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers.integrations import MLflowCallback

    from agents.integrations import ControllerCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    while mlflow.active_run() is not None:  # a run left active by an earlier test would receive the Trainer's logs
        mlflow.end_run()
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # an earlier set_tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "controller-callback")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # made here with its artifact folder: the Trainer would make it with ./mlruns, inside the repository
    MlflowClient(uri).create_experiment("controller-callback", artifact_location=(tmp_path / "artifacts").as_uri())
    cb = ControllerCallback(AGENT, decision_interval=3)
    trainer, _, data = _trainer(env, tmp_path, cb, None, 6, Hparams(1e-3, 0.01, 1.0), report_to=["mlflow"])
    (mlflow_callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, MLflowCallback)]
    cb.eval_dataset = _records(data.validation)
    try:
        trainer.train()
    finally:
        mlflow.end_run()
        # transformers' MLflowCallback ends whatever run is active when it is garbage-collected (its
        # __del__): collected during a later test, it ended that test's run part way (a failed CI)
        mlflow_callback._auto_end_run = False
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("controller-callback")
    (run,) = client.search_runs([exp.experiment_id])
    lr = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "controller/lr"), key=lambda m: m.step)]
    assert lr == [h.lr for h in cb.schedule]
    assert "controller_schedule.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_trainer_callback_drives_a_controlled_agent_on_deepspeed(env, tmp_path, fast_cfg_dict):
    """A residual controller with schedule actions and the scale-free observation in a real Trainer
    on ZeRO 0 fp32: it lays its base recipe over the run from the Trainer's lr (the user's guess),
    reads the weights' movement from the model, can roll back (the optimizer is a torch one), and the
    optimizer steps with exactly the schedule it records."""
    import mlflow

    from agents.integrations import ControllerCallback
    from agents.learners.training_run import TrainingOptions, run_training
    from trainers.config import parse_config
    from trainers.schedules import recipe_lr

    cfg = parse_config({**fast_cfg_dict, "control": {"residual": True, "schedule_actions": True,
                                                     "features": "scale_free", "lr_log2_step": 2.0}})
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.create_experiment("controlled", artifact_location=(tmp_path / "artifacts").as_uri())  # not ./mlruns
    mlflow.set_experiment("controlled")
    with mlflow.start_run():
        run_training(cfg, TrainingOptions(algo="ppo", decisions=4, checkpoint_every=0), tmp_path / "agent")
    start = Hparams(2e-3, 0.02, 0.5)
    cb = ControllerCallback(tmp_path / "agent", decision_interval=4)
    trainer, used, data = _trainer(env, tmp_path, cb, DS_CONFIGS["deepspeed zero 0 fp32"], 12, start)
    cb.eval_dataset = _records(data.validation)
    trainer.train()
    assert sorted(used) == list(range(12))
    for step, h in enumerate(cb.schedule):
        assert {lr for lr, _, _ in used[step]} == {h.lr} and {c for _, _, c in used[step]} == {h.grad_clip}
    recipe = cfg.base_recipe
    first = float(np.clip(cb.decisions[0]["action"][0], -1, 1)) * cfg.control.lr_log2_step
    # step 0: the recipe's warmup at the Trainer's lr (the guess), times the first decision's change
    assert cb.schedule[0].lr == pytest.approx(recipe_lr(recipe, 0, 12) * start.lr / recipe.lr * 2 ** first)
    assert cb.ctl.schedule_state is not None and cb.ctl.snapshots is not None
    assert [d["step"] for d in cb.decisions] == [0, 4, 8] and len(cb.decisions[0]["observation"]) == 22
    assert cb.ctl.context.trainable_params == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
