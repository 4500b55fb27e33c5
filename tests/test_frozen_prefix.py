"""SmolLM2 with a frozen prefix: the cached-state tail computes what the whole model computes,
the label-only head gives the full head's loss, and snapshots replay bit-identically."""
import math

import pytest
import torch

from trainers.config import DatasetSpec, SessionConfig
from trainers.data import IGNORE, build_task_data
from trainers.session import FineTuneSession, Hparams

# pytest-xdist (bash test.sh): this file's module fixtures are built once, in one worker
pytestmark = pytest.mark.xdist_group("test_frozen_prefix")

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
    # and Hugging Face's own loss for the tail (its shift, its head at every position)
    with torch.no_grad():
        hf = module.tail(inputs_embeds=batch.prefix_states, attention_mask=batch.attention_mask, labels=batch.labels)
    assert float(out.loss) == pytest.approx(float(hf.loss), rel=1e-5)


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


def test_a_snapshot_missing_trainable_weights_is_refused(sessions):
    _, tail, _, _ = sessions
    snap = tail.snapshot()
    snap.module.pop(next(k for k in snap.module if k.startswith("tail.model.layers.0.")))
    for v in snap.module.values():
        v.zero_()
    before = {k: v.clone() for k, v in tail.engine.module.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit"):
        tail.restore(snap)
    after = tail.engine.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused before anything was loaded


def test_saved_model_is_the_whole_model_with_the_trained_tail(sessions, tmp_path):
    from transformers import AutoModelForCausalLM

    _, tail, _, cached = sessions
    tail.reset_to_base(2)
    tail.use_data(cached, 2)
    tail.set_hparams(Hparams(1e-3, 0.0, 1.0))
    tail.train(3)
    tail.save_model(str(tmp_path / "model"))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert len(saved.model.layers) == 30
    batch = cached.validation.select(slice(0, 4))
    with torch.no_grad():
        expected = float(tail._forward(batch).loss)
        got = float(saved(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss)
    assert got == pytest.approx(expected, rel=1e-4)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


def _split():
    from trainers.data import TokenizedSplit

    ids = torch.arange(64 * 16).remainder(64).view(64, 16)
    return TokenizedSplit(ids, torch.ones_like(ids), ids.clone())


def _build_in_another_process(cache_dir: str, out: str) -> None:
    from pathlib import Path

    from trainers.frozen_prefix import cached_prefix_states

    model, split = _tiny_llama(), _split()
    Path(out + ".ready").touch()  # imports done: the next call is the one that must wait on the lock
    torch.save(cached_prefix_states(model, "tiny-llama", split, 3, "test", cache_dir=Path(cache_dir)), out)


def test_a_second_process_waits_for_the_first_and_reads_its_file(tmp_path):
    """While one process holds the build lock, another waits; once the first has written the file,
    the second reads it instead of building its own."""
    import fcntl
    import multiprocessing
    import time

    from safetensors.torch import save

    from trainers.frozen_prefix import cache_key

    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key("tiny-llama", _split(), 3, _tiny_llama())
    with open(cache / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test is "the first process", building
        proc = multiprocessing.get_context("spawn").Process(target=_build_in_another_process,
                                                             args=(str(cache), str(tmp_path / "got.pt")))
        proc.start()
        ready = tmp_path / "got.pt.ready"
        deadline = time.time() + 180
        while not ready.exists() and proc.is_alive() and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), "the second process never reached the cache"
        time.sleep(3)  # ample for a tiny build, had it not waited
        assert proc.is_alive() and not (tmp_path / "got.pt").exists()  # waiting, not building
        marker = torch.full((64, 16, 32), 7.0)
        (cache / f"{key}.safetensors").write_bytes(save({"states": marker}))
        fcntl.flock(lock, fcntl.LOCK_UN)
    proc.join(120)
    assert proc.exitcode == 0
    assert torch.equal(torch.load(tmp_path / "got.pt"), marker)  # it read the first one's file


def test_cache_key_changes_with_what_changes_the_states():
    from trainers.data import TokenizedSplit
    from trainers.frozen_prefix import cache_key

    full, split = _tiny_llama(), _split()
    base = cache_key("m", split, 3, full)
    reshaped = TokenizedSplit(split.input_ids.view(32, 32), split.attention_mask.view(32, 32), split.labels.view(32, 32))
    assert len({base, cache_key("m", reshaped, 3, full), cache_key("m", split, 2, full), cache_key("other", split, 3, full),
                cache_key("m", split, 3, full.to(torch.bfloat16))}) == 5


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


@pytest.mark.parametrize("model, k, frozen, message", [
    ("smollm2-135m", 30, True, "between 1 and 29 for this model"),  # the prefix needs a frozen layer
    ("tiny-gpt", 2, True, "needs a Llama-style model"),
    ("tiny-gpt", 9, False, "between 1 and"),
])
def test_a_depth_the_model_lacks_is_a_config_error(model, k, frozen, message):
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        FineTuneSession(SessionConfig(model=model, device="cpu", trainable_last_layers=k, frozen_prefix=frozen))


def test_one_pass_gives_every_cut_point_as_separate_passes_do(sessions, tmp_path, monkeypatch):
    import trainers.frozen_prefix as fp

    _, tail, data, _ = sessions
    full, split = tail._prefix_model, data.validation
    both = fp.prefix_states(full, split, [26, 28])
    for n in (26, 28):
        assert torch.equal(both[n], fp.prefix_states(full, split, n))
    assert not torch.equal(both[26], both[28])
    passes = []
    real = fp.prefix_states
    monkeypatch.setattr(fp, "prefix_states", lambda *a, **k: passes.append(a[2]) or real(*a, **k))
    got = fp.cached_prefix_states(full, "m", split, 28, "t", cache_dir=tmp_path, also_at=[22, 26])
    assert torch.equal(got, both[28]) and passes == [[22, 26, 28]]  # one pass, three cut points
    for n in (22, 26):  # the others are read from the cache, with no further pass
        fp.cached_prefix_states(full, "m", split, n, "t", cache_dir=tmp_path, also_at=[22, 26, 28])
    assert passes == [[22, 26, 28]] and len(list(tmp_path.glob("*.safetensors"))) == 3


def test_trimming_the_padding_changes_no_loss_and_no_real_state():
    """Batches are cut after their last real token (right padding, causal attention): the loss,
    the label logits and every real position's cached state match the untrimmed computation."""
    from trainers.data import TokenizedSplit
    from trainers.frozen_prefix import CausalLMTail, _first_layers, build_tail, prefix_states

    full = _tiny_llama().eval()
    ids = torch.randint(0, 64, (5, 16), generator=torch.Generator().manual_seed(2))
    lengths = [9, 5, 11, 7, 3]  # the longest ends at 11: positions 11..15 are padding in every row
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    split = TokenizedSplit(ids, mask, labels)
    cut = split.trimmed()
    assert cut.input_ids.shape == (5, 11) and torch.equal(cut.input_ids, ids[:, :11])
    full_row = TokenizedSplit(ids, torch.ones_like(ids), ids)
    assert full_row.trimmed() is full_row  # nothing to cut
    with torch.no_grad():
        assert float(full(input_ids=cut.input_ids, attention_mask=cut.attention_mask, labels=cut.labels).loss) == \
            pytest.approx(float(full(input_ids=ids, attention_mask=mask, labels=labels).loss), rel=1e-5)
        with _first_layers(full, 3) as body:  # one untrimmed pass, as before trimming
            untrimmed = body(input_ids=ids, attention_mask=mask).last_hidden_state
        states = prefix_states(full, split, 3, batch_size=2)  # batches by length, each trimmed
        for i, n in enumerate(lengths):
            assert torch.allclose(states[i, :n], untrimmed[i, :n], atol=1e-5)
        assert torch.count_nonzero(states[:, 11:]) == 0  # after every batch's cut: never computed
        tail = CausalLMTail(build_tail(full, 1))
        a = tail(states, mask, labels)
        b = tail(states[:, :11], mask[:, :11], labels[:, :11])
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
