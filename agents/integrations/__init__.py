"""A learned controller inside the user's own training: a Hugging Face Trainer callback and an
ask-and-tell API for hand-written DeepSpeed loops.

    from agents.integrations import ControllerCallback, SteppedController, set_engine_hparams
"""
from agents.integrations.stepped import ModelSnapshots, SteppedController, read_schedule, set_engine_hparams
from trainers.session import Hparams

__all__ = ["ControllerCallback", "Hparams", "ModelSnapshots", "SteppedController", "read_schedule",
           "set_engine_hparams"]


def __getattr__(name: str):
    if name == "ControllerCallback":  # imports transformers' Trainer machinery only when asked for
        from agents.integrations.trainer_callback import ControllerCallback

        return ControllerCallback
    raise AttributeError(name)
