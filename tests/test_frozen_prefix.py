"""SmolLM2 with a frozen prefix: the cached-state tail computes what the whole model computes,
the label-only head gives the full head's loss, and snapshots replay bit-identically."""
import math

import pytest
import torch

from trainers.config import DatasetSpec, SessionConfig
from trainers.data import IGNORE, build_task_data
from trainers.session import FineTuneSession, Hparams

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def sessions():
    common = dict(model="smollm2-135m", device="cpu", micro_batch_size=4, seq_len=48, trainable_last_layers=2)
    whole = FineTuneSession(SessionConfig(**common))  # the full model, first layers frozen
    tail = FineTuneSession(SessionConfig(**common, frozen_prefix=True))
    spec = DatasetSpec(kind="bbc_topic", max_train_examples=24, prompt_template=CHAT)
    data = build_task_data("t", spec, whole.tokenizer, 48, 8, 8)
    yield whole, tail, data, tail.prepare(data)
    whole.close()
    tail.close()


def test_cached_tail_trains_as_the_whole_model_does(sessions):
    whole, tail, data, cached = sessions
    assert cached.train.prefix_states.shape == (24, 48, 576)
    for s, d in ((whole, data), (tail, cached)):
        s.reset_to_base(0)
        s.use_data(d, 0)
        s.set_hparams(Hparams(1e-3, 0.01, 1.0))
    a, b = whole.train(3), tail.train(3)  # same batches (same seed), same trainable weights, same AdamW
    for x, y in zip(a, b):
        assert y.loss == pytest.approx(x.loss, rel=1e-4) and y.grad_norm == pytest.approx(x.grad_norm, rel=1e-3)
    ev_whole, ev_tail = whole.evaluate("validation"), tail.evaluate("validation")
    assert ev_tail.loss == pytest.approx(ev_whole.loss, rel=1e-4) and ev_tail.metric == ev_whole.metric
    assert a[0].loss > a[-1].loss  # it learned


def test_label_only_head_gives_the_full_heads_loss(sessions):
    _, tail, _, cached = sessions
    batch = cached.train.select(slice(0, 4))
    module = tail.engine.module
    with torch.no_grad():
        out = module(batch.prefix_states, batch.attention_mask, batch.labels)
        hidden = module.tail.model(inputs_embeds=batch.prefix_states, attention_mask=batch.attention_mask).last_hidden_state
        logits = module.tail.lm_head(hidden)[:, :-1]  # the head at every position
        full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1),
                                                 ignore_index=IGNORE)
    assert out.logits.shape[0] == int((batch.labels[:, 1:] != IGNORE).sum()) < logits.shape[0] * logits.shape[1] / 4
    assert float(out.loss) == pytest.approx(float(full), rel=1e-5)


def test_tail_snapshot_replays_bit_identically_and_leaves_frozen_weights_out(sessions):
    _, tail, _, cached = sessions
    tail.reset_to_base(1)
    tail.use_data(cached, 1)
    tail.set_hparams(Hparams(3e-4, 0.01, 1.0))
    tail.train(2)
    snap = tail.snapshot()
    first = [m.loss for m in tail.train(3)]
    tail.restore(snap)
    second = [m.loss for m in tail.train(3)]
    assert first == second and all(math.isfinite(x) for x in first)
    assert not any("embed_tokens" in k or "lm_head" in k for k in snap.module)  # frozen: never copied
    assert any(k.startswith("tail.model.layers.1.") for k in snap.module)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


def _build_in_another_process(cache_dir: str, out: str) -> None:
    from trainers.data import TokenizedSplit
    from trainers.frozen_prefix import cached_prefix_states

    ids = torch.arange(64 * 16).remainder(64).view(64, 16)
    split = TokenizedSplit(ids, torch.ones_like(ids), ids.clone())
    states = cached_prefix_states(_tiny_llama(), "tiny-llama", split, 3, "test", cache_dir=__import__("pathlib").Path(cache_dir))
    torch.save(states, out)


def test_two_processes_asking_for_one_cache_get_one_whole_file(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_in_another_process, args=(str(tmp_path / "cache"), str(tmp_path / f"{i}.pt")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    a, b = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert a.shape == (64, 16, 32) and torch.equal(a, b)
    files = sorted(f.name for f in (tmp_path / "cache").iterdir() if not f.name.startswith("."))
    assert len(files) == 1 and files[0].endswith(".safetensors")  # one entry, no partial file left


def test_tail_of_a_llama_matches_its_last_layers():
    from trainers.data import TokenizedSplit
    from trainers.frozen_prefix import CausalLMTail, build_tail, prefix_states

    full = _tiny_llama().eval()
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, IGNORE)
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask, labels=labels).loss
        states = prefix_states(full, TokenizedSplit(ids, mask, labels), 3)
        got = CausalLMTail(build_tail(full, 1))(states, mask, labels).loss
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
