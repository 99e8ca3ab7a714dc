"""peftlab.data and data/: the committed files vs a fresh run of the generator (byte equality),
test/validation inputs vs training inputs (no overlap), record validation errors vs the file
and line they must name, and encoded labels vs the answer text (only the answer is learned)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from peftlab import data

TOK = None


def tok():
    global TOK
    if TOK is None:
        from peftlab import models
        TOK = models.load_tokenizer()
    return TOK


def _generator():
    spec = importlib.util.spec_from_file_location("gen", data.data_dir() / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generator_reproduces_committed_files(tmp_path):
    _generator().write(tmp_path)
    for task in data.TASKS:
        for split in data.SPLITS:
            assert (tmp_path / task / f"{split}.jsonl").read_bytes() == \
                data.task_path(task, split).read_bytes(), (task, split)


@pytest.mark.parametrize("task", data.TASKS)
def test_no_test_prompt_repeats_a_training_prompt(task):
    train = {r["input"] for r in data.validate_file(data.task_path(task, "train"))}
    for split in ("validation", "test"):
        rows = data.validate_file(data.task_path(task, split))
        assert not train & {r["input"] for r in rows}, split
    assert [len(data.validate_file(data.task_path(task, s))) for s in data.SPLITS] == [2000, 200, 200]


def test_orders_answers_parse_with_fixed_keys():
    rows = data.validate_file(data.task_path("orders", "test"))
    for r in rows:
        f = data.parse_fields("orders", r["output"])
        assert list(f) == ["name", "item", "qty", "city", "day", "priority"]
        assert json.loads(f["name"]) in r["input"] and json.loads(f["city"]) in r["input"]
    assert 0.2 < sum(json.loads(r["output"])["priority"] == "high" for r in rows) / len(rows) < 0.6


def test_load_split_is_a_dataset():
    ds = data.load_split("sql", "validation")
    assert ds.num_rows == 200 and set(data.REQUIRED_FIELDS) <= set(ds.column_names)


@pytest.mark.parametrize("content, needle", [
    ('{"id": "a", "instruction": "i", "input": "x", "output": "y"}\n{"id": "b", "instr\n', ":2: malformed JSON"),
    ('{"id": "a", "instruction": "i", "input": "x"}\n', ":1: missing field(s) output"),
    ('{"id": "a", "instruction": "i", "input": "x", "output": 3}\n', ":1: field output must be a string"),
    ("", ": no records (the file is empty"),
    ("\n\n", ": no records (the file is empty"),
])
def test_validation_names_file_and_line(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(data.DataError) as err:
        data.validate_file(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_unknown_task_or_split_says_what_to_use():
    with pytest.raises(ValueError, match="orders, sql"):
        data.task_path("nope", "train")
    with pytest.raises(ValueError, match="train, validation, test"):
        data.task_path("orders", "dev")


def test_labels_mask_the_prompt_and_keep_the_answer():
    rec = data.validate_file(data.task_path("orders", "train"))[0]
    enc = data.encode(tok(), rec)
    n_prompt = len(tok()(data.prompt_text(tok(), rec), add_special_tokens=False)["input_ids"])
    assert enc["labels"][:n_prompt] == [data.IGNORE_INDEX] * n_prompt
    assert enc["input_ids"][:n_prompt] == tok()(data.prompt_text(tok(), rec), add_special_tokens=False)["input_ids"]
    answer = tok().decode(enc["labels"][n_prompt:])
    assert answer == rec["output"] + tok().eos_token
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"])


def test_collator_pads_to_batch_max_and_masks_padding():
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    b = data.Collator(pad_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [8, 9, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7, 8], [-100, 9, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert data.padding_fraction(b) == pytest.approx(2 / 8)
    assert data.Collator(pad_id=0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (2, 8)


def test_parse_fields_sql_and_garbage():
    f = data.parse_fields("sql", "SELECT item FROM products ORDER BY price DESC LIMIT 3;")
    assert f == {"SELECT": "item", "FROM": "products", "ORDER BY": "price DESC", "LIMIT": "3"}
    assert data.parse_fields("orders", '{"name": "x"') is None
    assert data.parse_fields("orders", "[1, 2]") is None
    assert data.parse_fields("sql", "hello") is None
