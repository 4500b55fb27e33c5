"""Gymnasium environments: `import envs; gymnasium.make("DeepSpeedFineTune-v0")`."""
from gymnasium.envs.registration import register

from envs.finetune_env import EpisodeLog, FineTuneEnv

register(id="DeepSpeedFineTune-v0", entry_point="envs.finetune_env:FineTuneEnv")

__all__ = ["FineTuneEnv", "EpisodeLog"]
