"""A learned controller inside a Hugging Face ``Trainer`` (or any subclass: TRL's ``SFTTrainer``
calls the same callback events), with or without DeepSpeed.

    cb = ControllerCallback("results/agents/<name>", eval_dataset=my_eval_set)
    trainer = Trainer(model, args, train_dataset=..., callbacks=[cb])   # deepspeed=<config> or not
    trainer.train()
    cb.schedule      # the hyperparameters applied at every step
    cb.decisions     # each observation, the action, what it set

What to put in ``TrainingArguments``:
  - ``learning_rate``, ``weight_decay`` and ``max_grad_norm``: the starting hyperparameters (the
    controller changes them from there; it clips them to the bounds it was trained with);
  - ``lr_scheduler_type="constant"`` and no warmup: the callback owns the schedule. It sets the
    hyperparameters before every step (``on_step_begin``), so a scheduler's write after a step
    never reaches an optimizer step; a constant scheduler only keeps the Trainer's own
    ``learning_rate`` log from showing something else (the applied values are logged as
    ``controller/lr``, ``controller/weight_decay``, ``controller/grad_clip``);
  - ``max_steps``: the run's length; the controller spreads the decisions of its training
    episodes over it (agents/integrations/stepped.py says how);
  - gradient accumulation works: a "step" is an optimizer step.

Every decision interval the callback evaluates the model itself (mean per-token cross-entropy) on
``eval_dataset``: pass the Trainer's (callbacks are not handed it). Without one it evaluates on
the last ``eval_examples`` examples of the training set (a slice the run also trains on).
It asks the Trainer to log every step: the per-step loss and gradient norm are what the
controller observes.

Where the values go: lr and weight decay into the param groups of the optimizer that steps (under
DeepSpeed, the engine's optimizer, reached through accelerate's wrapper, ZeRO or bf16 included;
param groups the user gave no weight decay keep none); clipping into ``args.max_grad_norm``
(the Trainer clips) and, under DeepSpeed (which clips itself), through ``set_engine_hparams`` on
the engine. When an MLflow run is active (``report_to="mlflow"``), the applied values go into it,
and the schedule file is logged as an artifact.
"""
from __future__ import annotations

import gc
import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from agents.integrations.stepped import ModelSnapshots, SteppedController, set_engine_hparams
from trainers.session import Hparams

SCHEDULE_FILE = "controller_schedule.json"


def find_deepspeed_engine(model: torch.nn.Module):
    """The DeepSpeed engine wrapping ``model``, or None. A callback is handed the model and the
    optimizer, not the engine, and the engine keeps the clipping threshold that ZeRO 0 reads."""
    try:
        from deepspeed import DeepSpeedEngine
    except ImportError:
        return None
    return next((o for o in gc.get_objects() if isinstance(o, DeepSpeedEngine) and o.module is model), None)


def keep_grad_norm(engine) -> None:
    """DeepSpeed at ZeRO 0 in fp32 clips the gradients itself and throws their norm away, so the
    Trainer logs none; compute it (over the same gradients, before clipping) where the engine
    clips, and keep it where ``get_global_grad_norm`` reads. The clipping itself is unchanged."""
    if getattr(engine, "_controller_keeps_grad_norm", False):
        return
    clip = engine.clip_fp32_gradients

    def clip_keeping_norm():
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        engine._global_grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else None
        clip()

    engine.clip_fp32_gradients = clip_keeping_norm
    engine._controller_keeps_grad_norm = True


def _is_deepspeed_optimizer(optimizer) -> bool:
    """accelerate wraps DeepSpeed's optimizer in DeepSpeedOptimizerWrapper, however DeepSpeed was
    turned on (TrainingArguments.deepspeed, accelerate launch, an accelerate plugin)."""
    try:
        from accelerate.utils import DeepSpeedOptimizerWrapper
    except ImportError:
        return False
    return isinstance(optimizer, DeepSpeedOptimizerWrapper)


def _inner_optimizer(optimizer):
    """accelerate wraps the optimizer that steps (``AcceleratedOptimizer.optimizer``)."""
    return getattr(optimizer, "optimizer", optimizer)


class ControllerCallback(TrainerCallback):
    """Steers lr, weight decay and clipping of a Trainer run with a controller from an agent folder."""

    def __init__(self, agent: str | Path, eval_dataset: Optional[Any] = None, eval_examples: int = 64,
                 decision_interval: Optional[int] = None, output_dir: Optional[str | Path] = None) -> None:
        from agents.learners.agent_folder import Controller

        self.agent = Controller(agent)  # a bad folder stops here, before any training
        self.eval_dataset = eval_dataset
        self.eval_examples = eval_examples
        self.decision_interval = decision_interval
        self.output_dir = output_dir
        self.ctl: Optional[SteppedController] = None
        self._engine = None
        self._optimizer = None
        self._args = None
        self._no_decay_groups: set[int] = set()
        self._collate = None
        self._eval_set = None
        self._mlflow_run: Optional[str] = None

    # ------------------------------------------------------------ what users read
    @property
    def schedule(self) -> list[Hparams]:
        return list(self.ctl.schedule) if self.ctl else []

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return list(self.ctl.decisions) if self.ctl else []

    # ------------------------------------------------------------ set-up
    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if not state.max_steps or state.max_steps < 1:
            raise ValueError("ControllerCallback needs a run of known length: set TrainingArguments.max_steps")
        if not args.weight_decay or args.weight_decay <= 0:
            raise ValueError("ControllerCallback: set TrainingArguments.weight_decay > 0, the starting value (the "
                             "controller's lowest is its bound); the param groups the Trainer then leaves at 0 "
                             "(biases, norms) stay at 0")
        self._args, self._model, self._optimizer = args, model, optimizer
        self._engine = None
        if getattr(args, "deepspeed", None) or _is_deepspeed_optimizer(optimizer):
            self._engine = find_deepspeed_engine(model)
            if self._engine is None:
                raise RuntimeError("ControllerCallback: the run uses DeepSpeed but its engine was not found")
            keep_grad_norm(self._engine)
        inner = _inner_optimizer(optimizer)
        self._no_decay_groups = {i for i, g in enumerate(inner.param_groups) if g.get("weight_decay", 0.0) == 0.0}
        self._collate = train_dataloader.collate_fn if train_dataloader is not None else None
        if self.eval_dataset is not None:
            self._eval_set = self.eval_dataset
        else:
            train = train_dataloader.dataset if train_dataloader is not None else None
            if train is None or not hasattr(train, "__len__"):
                raise ValueError("ControllerCallback: pass eval_dataset= (the training set has no length to "
                                 "take an evaluation slice from)")
            n = min(self.eval_examples, len(train))
            self._eval_set = [train[i] for i in range(len(train) - n, len(train))]
        clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else 1.0
        initial = Hparams(float(args.learning_rate), float(args.weight_decay), float(clip))
        train = train_dataloader.dataset if train_dataloader is not None else None
        context = {"effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps
                   * args.world_size, "train_examples": len(train) if hasattr(train, "__len__") else 0}
        stepping = self._engine.optimizer if self._engine is not None else inner
        # a rollback restores a torch optimizer's state (DeepSpeed's at ZeRO 0 fp32 is one); ZeRO's own
        # and bf16's are not restored here, so a rollback asked for there is recorded as not done
        snapshots = ModelSnapshots(model, stepping) if isinstance(stepping, torch.optim.Optimizer) else None
        self.ctl = SteppedController(self.agent, state.max_steps, initial, decision_interval=self.decision_interval,
                                     model=model, context=context, snapshots=snapshots)
        self.ctl.tell_eval(self.evaluate(args))
        if "mlflow" in (args.report_to or []):  # the Trainer's MLflowCallback (earlier in the list) has started its run
            import mlflow

            run = mlflow.active_run()
            self._mlflow_run = run.info.run_id if run is not None else None

    # ------------------------------------------------------------ every step
    def on_step_begin(self, args, state, control, **kwargs):
        assert self.ctl is not None
        if state.global_step >= self.ctl.total_steps:
            return
        if state.global_step != self.ctl.steps_done:
            raise RuntimeError(f"ControllerCallback: the Trainer is at step {state.global_step} but the controller "
                               f"has seen {self.ctl.steps_done}; resuming a Trainer run from a checkpoint is not "
                               "supported (start the run again)")
        self.apply(self.ctl.hparams_for(state.global_step))

    def apply(self, h: Hparams) -> None:
        """Set the hyperparameters on the optimizer that steps, and the clip where it is read."""
        if self._engine is not None:  # the engine's optimizer: lr, wd; its config and optimizer: clip
            set_engine_hparams(self._engine, h, self._no_decay_groups)
        else:
            for i, g in enumerate(_inner_optimizer(self._optimizer).param_groups):
                g["lr"] = float(h.lr)
                g["weight_decay"] = 0.0 if i in self._no_decay_groups else float(h.weight_decay)
        self._args.max_grad_norm = float(h.grad_clip)  # the Trainer clips with it (and gates on it under DeepSpeed)

    def on_step_end(self, args, state, control, **kwargs):
        control.should_log = True  # the controller observes every step's loss and gradient norm
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.ctl is None or "loss" not in logs or self.ctl.steps_done >= state.global_step:
            return  # not a training step's log (evaluation, the final summary) or already told
        step = state.global_step - 1
        if logs.get("grad_norm") is None:
            raise RuntimeError("the Trainer logged no gradient norm for this step; the controller observes it "
                               "(set TrainingArguments.max_grad_norm > 0)")
        grad_norm = float(logs["grad_norm"])
        skipped = bool(args.fp16) and not math.isfinite(grad_norm)  # a loss-scale overflow: fp16 skips the step
        self.ctl.tell_step(logs["loss"], grad_norm, skipped=skipped)
        applied = self.ctl.schedule[step]
        self._log_mlflow({"controller/lr": applied.lr, "controller/weight_decay": applied.weight_decay,
                          "controller/grad_clip": applied.grad_clip}, state.global_step)
        if self.ctl.wants_eval(step):
            loss = self.evaluate(args)
            self.ctl.tell_eval(loss)
            self._log_mlflow({"controller/eval_loss": loss}, state.global_step)
            if self.ctl.diverged:  # an episode ends here; so does the run
                logging.getLogger(__name__).warning(
                    "ControllerCallback: the run diverged at step %d (evaluation loss %s against %s at the start); "
                    "stopping it", state.global_step, loss, self.ctl.initial_eval_loss)
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.ctl is None or not state.is_world_process_zero:
            return
        out = Path(self.output_dir or args.output_dir) / SCHEDULE_FILE
        self.ctl.save(out)
        if self._mlflow_run:  # the Trainer's MLflowCallback may have ended the run already: log to it by id
            import mlflow

            mlflow.MlflowClient().log_artifact(self._mlflow_run, str(out))

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, args) -> float:
        """Mean per-token cross-entropy over every label token of the evaluation set, as
        ``FineTuneSession.evaluate`` computes it (summed over tokens, then divided once)."""
        model = self._model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        bs = args.per_device_eval_batch_size
        total, tokens = 0.0, 0
        try:
            for s in range(0, len(self._eval_set), bs):
                examples = [self._eval_set[i] for i in range(s, min(s + bs, len(self._eval_set)))]
                batch = self._collate(examples) if self._collate else _stack(examples)
                batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                if "labels" not in batch:
                    raise ValueError("ControllerCallback: evaluation examples need 'labels' (-100 where no loss)")
                labels = batch.pop("labels")
                logits = model(**batch).logits[:, :-1].float()
                target = labels[:, 1:]
                total += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"))
                tokens += int((target != -100).sum())
        finally:
            model.train(was_training)
        if tokens == 0:
            raise ValueError("ControllerCallback: the evaluation set has no label tokens")
        return total / tokens

    def _log_mlflow(self, metrics: dict[str, float], step: int) -> None:
        if not self._mlflow_run:
            return
        import time

        import mlflow
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(self._mlflow_run, metrics=[Metric(k, float(v), now, step)
                                                                   for k, v in metrics.items() if math.isfinite(v)])


def _stack(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(e[k]) for e in examples]) for k in examples[0]}
