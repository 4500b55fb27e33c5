import json
import re

import pytest

from trainers.config import ConfigError, DatasetSpec
from trainers.data import (IGNORE, BBC_TOPICS, DataFileError, bbc_articles, build_task_data, read_jsonl, task_records,
                           split_records, raw_records)


def test_bbc_corpus_is_the_real_one():
    arts = bbc_articles()
    assert set(arts) == set(BBC_TOPICS)
    assert sum(len(v) for v in arts.values()) == 2225
    assert len(arts["sport"]) == 511


def test_splits_are_disjoint_and_cover_everything():
    recs = [{"text": f"doc {i}"} for i in range(100)]
    tr, va, te = split_records(recs, seed=3)
    ids = [r["text"] for r in tr + va + te]
    assert len(ids) == len(set(ids)) == 100
    assert len(va) == 15 and len(te) == 15


def _jsonl(tmp_path, lines):
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_jsonl_errors_name_file_line_and_problem(tmp_path):
    good = json.dumps({"prompt": "q", "completion": "a"})
    p = _jsonl(tmp_path, [good] * 11 + ["{not json"])
    with pytest.raises(DataFileError, match=r"data.jsonl:12: not valid JSON"):
        read_jsonl(p)
    p = _jsonl(tmp_path, [good, json.dumps({"prompt": "q", "answer": "a"})])
    with pytest.raises(DataFileError, match=r"data.jsonl:2: .*got \['answer', 'prompt'\]"):
        read_jsonl(p)
    p = _jsonl(tmp_path, [good, json.dumps({"prompt": "q", "completion": 3})])
    with pytest.raises(DataFileError, match=r":2: field 'completion' must be a string"):
        read_jsonl(p)
    p = _jsonl(tmp_path, [good, json.dumps({"text": "x"})])
    with pytest.raises(DataFileError, match=r":2: mixes"):
        read_jsonl(p)
    p = _jsonl(tmp_path, [good] * 3)
    with pytest.raises(DataFileError, match="at least 10 records"):
        read_jsonl(p)
    with pytest.raises(DataFileError, match="no such data file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_prompt_tokens_carry_no_loss(tiny_session, tmp_path):
    recs = [json.dumps({"prompt": f"Question {i}?", "completion": f" answer {i % 3}"}) for i in range(40)]
    p = _jsonl(tmp_path, recs)
    data = build_task_data("u", DatasetSpec(kind="jsonl", path=str(p)), tiny_session.tokenizer, 32, 8, 8)
    tok = tiny_session.tokenizer
    row = 0
    labels, ids = data.train.labels[row], data.train.input_ids[row]
    used = labels != IGNORE
    text = tok.decode(ids[used])
    assert text.startswith(" answer") and text.endswith(tok.eos_token)
    prompt_part = tok.decode(ids[(~used) & (data.train.attention_mask[row] == 1)])
    assert prompt_part.startswith("Question") and "answer" not in prompt_part
    assert data.metric == "exact_match"


def test_packaged_datasets_yield_records():
    assert len(raw_records(DatasetSpec(kind="bbc_topic"))) == 2225
    assert len(raw_records(DatasetSpec(kind="chitchat"))) > 100_000
    ar = raw_records(DatasetSpec(kind="arithmetic"))
    q = ar[0]["prompt"]
    a, op, b = q.split()[1:4]
    assert int(ar[0]["completion"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_new_kinds_build_real_records():
    from trainers.data import BBC_TOPICS, first_sentence

    topics = raw_records(DatasetSpec(kind="bbc_topic", source="first_sentence"))
    assert len(topics) == 2225 and {r["completion"].strip() for r in topics} == set(BBC_TOPICS)
    heads = raw_records(DatasetSpec(kind="bbc_headline"))
    assert len(heads) == 2225 and all(r["completion"].strip() for r in heads)
    assert first_sentence("One. Two. Three.") == "One."
    pv = raw_records(DatasetSpec(kind="math", module="numbers.place_value"))
    assert len(pv) == 2000 and "digit" in pv[0]["prompt"] and pv[0]["completion"].strip().isdigit()
    again = raw_records(DatasetSpec(kind="math", module="numbers.place_value"))
    assert again == pv  # generated from a fixed seed: the same problems every time
    other = raw_records(DatasetSpec(kind="math", module="numbers.place_value", seed=1))
    assert other != pv


def test_unknown_math_module_names_the_field():
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match="dataset.module 'numbers.nope'"):
        raw_records(DatasetSpec(kind="math", module="numbers.nope"))


def test_prompt_template_wraps_prompts_and_the_answer_follows_directly(tiny_session):
    spec = DatasetSpec(kind="arithmetic", prompt_template="<user>{prompt}</user><bot>")
    data = build_task_data("a", spec, tiny_session.tokenizer, 32, 8, 8)
    tok = tiny_session.tokenizer
    row = data.train.input_ids[0][data.train.attention_mask[0] == 1]
    text = tok.decode(row)
    assert text.startswith("<user>Q:") and "</user><bot>" in text
    answer = tok.decode(data.train.input_ids[0][data.train.labels[0] != IGNORE])
    assert answer.endswith(tok.eos_token) and not answer.startswith(" ")
    assert answer[: -len(tok.eos_token)].strip().lstrip("-").isdigit()


def test_a_template_with_other_braces_is_used_as_written(tiny_session):
    # a JSON-ish system turn: str.format would read {"role" ...} as a field and fail
    spec = DatasetSpec(kind="arithmetic", prompt_template='{"role": "system"} {prompt} =>')
    train, _, _ = task_records(spec, 8, 8)
    assert train[0]["prompt"].startswith('{"role": "system"} Q:') and train[0]["prompt"].endswith("=>")


def test_repeated_examples_never_reach_validation_or_test(tmp_path):
    # 40 records, only 10 distinct prompts: every held-out prompt would be a training prompt
    recs = [json.dumps({"prompt": f"Question {i % 10}?", "completion": f" answer {i % 3}"}) for i in range(40)]
    recs += [json.dumps({"prompt": f"Fresh {i}?", "completion": " new"}) for i in range(20)]
    p = _jsonl(tmp_path, recs)
    train, val, test = task_records(DatasetSpec(kind="jsonl", path=str(p)), 8, 8)
    seen = {r["prompt"] for r in train}
    assert val and test and not [r for r in val + test if r["prompt"] in seen]
    assert len(val) + len(test) < 2 * 9  # the plain 15% / 15% cut held repeats; they were removed


def test_data_that_decontamination_empties_is_an_error_naming_the_file(tmp_path):
    p = _jsonl(tmp_path, [json.dumps({"prompt": "Same?", "completion": " yes"})] * 20)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: 20 records leave an empty split")):
        task_records(DatasetSpec(kind="jsonl", path=str(p)), 8, 8)
