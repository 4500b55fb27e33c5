"""The SmolLM2-135M preset loads from the packaged GGUF and takes a real DeepSpeed step on CPU."""
import math

import torch

from trainers.config import DatasetSpec, SessionConfig, load_config
from trainers.data import build_task_data
from trainers.session import FineTuneSession, Hparams
import pytest



def test_smollm2_preset_takes_a_training_step_on_cpu():
    preset = load_config("smollm2_bbc").session
    cfg = SessionConfig(model=preset.model, precision="fp32", device="cpu", micro_batch_size=2, seq_len=32,
                        trainable_last_layers=2)
    s = FineTuneSession(cfg)
    try:
        n = sum(p.numel() for p in s.engine.module.parameters())
        assert 130e6 < n < 140e6  # 134.5M: the real model, dequantised
        data = build_task_data("bbc", DatasetSpec(kind="bbc_topic"), s.tokenizer, 32, 4, 4)
        s.reset_to_base(0)
        s.use_data(data, 0)
        s.set_hparams(Hparams(1e-4, 0.0, 1.0))
        frozen = s.engine.module.model.layers[0].mlp.down_proj.weight.detach().clone()
        trained = s.engine.module.model.layers[-1].mlp.down_proj.weight.detach().clone()
        (m,) = s.train(1)
        assert math.isfinite(m.loss) and m.grad_norm > 0
        assert torch.equal(frozen, s.engine.module.model.layers[0].mlp.down_proj.weight)
        assert not torch.equal(trained, s.engine.module.model.layers[-1].mlp.down_proj.weight)
        assert math.isfinite(s.evaluate("validation").loss)
    finally:
        s.close()
