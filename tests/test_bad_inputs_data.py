"""peftlab.data on bad and edge inputs (issue 19, defects 2 and 4): each bad input vs the one-line
DataError it must give (file, line, field and the fix named in the message), each valid edge case
vs the records it must load, and the length rule (prompt cut from the left, answer never cut, no
row without a supervised token) vs the labels it produces."""
from __future__ import annotations

import json
import socket

import pytest

from peftlab import data

from test_data import tok  # noqa: E402  (the one cached embedded tokenizer of the data tests)


def rec(**kw) -> dict:
    return {"id": "a", "instruction": "Extract the order.", "input": "two teas to Oslo", "output": "yes", **kw}


def line(**kw) -> str:
    return json.dumps(rec(**kw))


OWN_HINT = "fix that line (format: data/DATASHEET.md)"


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(data.DataError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert "generate.py" not in msg, f"a learner's file must not be sent to the kit's generator: {msg}"
    return msg


# --- files: one case per class; (file content, line, what the message must say) -------------------

A, B = line(), line(id="b")
FILE_CASES = {
    "missing_output": (json.dumps({"id": "a", "instruction": "i", "input": "x"}), 1,
                       ["missing field(s) output", OWN_HINT]),
    "misspelt_field": (json.dumps({"id": "a", "instruction": "i", "input": "x", "Output": "y"}), 1,
                       ["missing field(s) output", "found 'Output'", "lowercase"]),
    "output_number": (line(output=3), 1, ["field output must be a string, got number 3", "json.dumps"]),
    "output_object": (line(output={"qty": 2}), 1, ["field output must be a string, got object", "json.dumps"]),
    "output_null": (A + "\n" + line(id="b", output=None), 2, ["field output must be a string, got null"]),
    "input_array": (line(input=["x"]), 1, ["field input must be a string, got array"]),
    "id_number": (line(id=7), 1, ["field id must be a string, got number 7"]),
    "id_blank": (line(id=" "), 1, ["field id is empty"]),
    "output_blank": (line(output="  "), 1, ["field output is blank", OWN_HINT]),
    "duplicate_id": (A + "\n" + B + "\n" + line(id="b"), 3, ["id 'b' is already used on line 2", "unique"]),
    "json_array_one_line": (json.dumps([rec(), rec(id="b")]), 1, ["got array", "JSON object"]),
    "json_array_pretty": (json.dumps([rec(), rec(id="b")], indent=2), 1,
                          ["one JSON array, not JSON Lines", "one record per line"]),
    "pretty_object": (json.dumps(rec(), indent=2), 1, ["spreads over several lines", "on one line"]),
    "trailing_comma": (A + ",\n" + B, 1, ["a comma after the record", "no commas"]),
    "malformed": (A + "\n" + '{"id": "b", "instr', 2, ["malformed JSON", "column", OWN_HINT]),
    "scalar_line": ('"hello"', 1, ["expected a JSON object", "got str"]),
    "null_line": (A + "\n\nnull", 3, ["got null"]),  # the line number counts the blank line
    "column_oriented": (json.dumps({f: ["v"] for f in data.REQUIRED_FIELDS}), 1,
                        ["columns of lists", "orient='records', lines=True"]),
    "csv": ("id,instruction,input,output\na,i,x,y", 1,
            ["not JSON Lines (a CSV", "convert it to one JSON object per line"]),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_file_names_file_line_field_and_fix(tmp_path, case):
    content, lineno, needles = FILE_CASES[case]
    path = tmp_path / "mine.jsonl"
    path.write_text(content + "\n")
    for loader in (data.validate_file, data.load_jsonl):
        msg = one_line_error(loader, path)
        assert msg.startswith(f"{path}:{lineno}: "), msg
        for needle in needles:
            assert needle in msg, (needle, msg)


@pytest.mark.parametrize("content", [b"", b"\n \n\r\n"])
def test_empty_file_says_to_write_records(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    msg = one_line_error(data.load_jsonl, path)
    assert msg.startswith(f"{path}: no records") and "one JSON object per line" in msg and "output" in msg


def test_non_utf8_byte_names_line_column_and_fix(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((A + "\n").encode() + json.dumps(rec(id="b", input="café"), ensure_ascii=False).encode("latin-1"))
    msg = one_line_error(data.load_jsonl, path)
    assert msg.startswith(f"{path}:2: byte 0xe9 at column ") and "save the file as UTF-8" in msg
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00\x00\x00")
    assert "compressed file" in one_line_error(data.load_jsonl, gz)


def test_missing_file_directory_and_non_path(tmp_path):
    msg = one_line_error(data.load_jsonl, tmp_path / "nope.jsonl")
    assert "nope.jsonl: no such file" in msg and "check the path" in msg
    (tmp_path / "train.jsonl").write_text(A + "\n")
    msg = one_line_error(data.load_jsonl, tmp_path)
    assert f"{tmp_path} is a folder" in msg and "train.jsonl" in msg
    assert "got NoneType" in one_line_error(data.load_jsonl, None)
    assert "empty list of files" in one_line_error(data.load_jsonl, [])


def test_glob_pattern_and_unreadable_file(tmp_path, monkeypatch):
    assert "pass a list of files" in one_line_error(data.load_jsonl, str(tmp_path / "*.jsonl"))
    path = tmp_path / "locked.jsonl"
    path.write_text(A + "\n")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "read_bytes", denied)  # root reads through chmod 000, so simulate it
    msg = one_line_error(data.load_jsonl, path)
    assert msg == f"{path}: cannot be read (Permission denied); check its permissions"


def test_duplicate_id_across_files_of_a_split(tmp_path):
    (tmp_path / "p1.jsonl").write_text(A + "\n")
    (tmp_path / "p2.jsonl").write_text(B + "\n" + A + "\n")
    msg = one_line_error(data.load_jsonl, [tmp_path / "p1.jsonl", tmp_path / "p2.jsonl"])
    assert "p2.jsonl" in msg and "id 'a' is also in" in msg and "p1.jsonl" in msg


def test_kit_files_point_to_the_generator(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_DATA", str(tmp_path))
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "train.jsonl").write_text(A + "\n" + line(id="b", output=3) + "\n")
    with pytest.raises(data.DataError, match=r"train.jsonl:2: field output must be a string.*python data/generate.py"):
        data.load_split("orders", "train")


# --- valid edge cases load --------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    (A + "\n\n" + B + "\n").encode(),                       # a blank line in the middle
    (A + "\r\n" + B + "\r\n").encode(),                     # Windows line ends
    (A + "\n" + B).encode(),                                # no newline at the end
    b"\xef\xbb\xbf" + (A + "\n" + B + "\n").encode(),        # a UTF-8 byte-order mark (Notepad)
    (line(meta=1) + "\n" + line(id="b", meta="x") + "\n").encode(),  # extra fields are kept, ignored
    (line(input="", instruction="") + "\n" + B).encode(),  # empty instruction and input are allowed
])
def test_valid_edge_cases_load(tmp_path, content):
    path = tmp_path / "ok.jsonl"
    path.write_bytes(content)
    ds = data.load_jsonl(path)
    assert ds.num_rows == 2 and ds["id"] == ["a", "b"] and set(data.REQUIRED_FIELDS) <= set(ds.column_names)


def test_load_files_gives_the_splits_given(tmp_path):
    (tmp_path / "tr.jsonl").write_text(A + "\n" + B + "\n")
    (tmp_path / "te.jsonl").write_text(line(id="t", input="three coffees to Rome") + "\n")
    dd = data.load_files(train=tmp_path / "tr.jsonl", test=str(tmp_path / "te.jsonl"))
    assert list(dd) == ["train", "test"] and dd["train"].num_rows == 2 and dd["test"]["id"] == ["t"]


def test_load_files_refuses_what_would_mislead(tmp_path):
    (tmp_path / "tr.jsonl").write_text(A + "\n" + B + "\n")
    (tmp_path / "te.jsonl").write_text(line(id="t") + "\n" + line(id="u", input="new") + "\n")
    msg = one_line_error(data.load_files, tmp_path / "tr.jsonl", None, tmp_path / "tr.jsonl")
    assert "tr.jsonl is given as both train and test" in msg and "separate files" in msg
    assert "unknown split(s) valid: use train=, validation=, test=" in one_line_error(
        lambda: data.load_files(train=tmp_path / "tr.jsonl", valid=tmp_path / "te.jsonl"))
    assert "needs train=" in one_line_error(data.load_files, None)
    with pytest.warns(UserWarning, match=r"1 of 2 test inputs repeat a training input \(first ids: t\)"):
        data.load_files(train=tmp_path / "tr.jsonl", test=tmp_path / "te.jsonl")


def test_loading_local_files_never_contacts_a_hub(tmp_path, monkeypatch):
    """Even with downloads allowed, a local file sends no download-count or telemetry request."""
    import datasets.config as dc
    import huggingface_hub.constants as hc

    calls = []

    def blocked(*args, **kwargs):
        calls.append(args[0])
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(dc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dc, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    (tmp_path / "own.jsonl").write_text(A + "\n" + B + "\n")
    assert data.load_jsonl(tmp_path / "own.jsonl").num_rows == 2
    data.tokenize([rec()], tok(), 64)
    assert calls == []
    assert (dc.HF_HUB_OFFLINE, dc.HF_UPDATE_DOWNLOAD_COUNTS) == (False, True), "the user's setting is restored"


# --- records in memory (train(..., train_records=...)) ----------------------------------------------

def test_records_in_memory_name_index_id_and_field():
    import datasets

    assert "no records to train on" in one_line_error(data.tokenize, [], tok())
    emptied = datasets.Dataset.from_list([rec()]).select([])
    assert "no records to train on" in one_line_error(data.tokenize, emptied, tok())
    noout = {"id": "q", "instruction": "i", "input": "x"}
    msg = one_line_error(data.tokenize, [rec(), noout], tok())
    assert msg.startswith("records[1] (id 'q'): missing field(s) output")
    ds = datasets.Dataset.from_list([rec(), noout])            # datasets fills the gap with None
    msg = one_line_error(data.tokenize, ds, tok())
    assert msg.startswith("dataset[1] (id 'q'): field output must be a string, got null")
    assert "already used by records[0]" in one_line_error(data.check_records, [rec(), rec()])
    assert "got str" in one_line_error(data.check_records, "my_train.jsonl")
    assert one_line_error(data.encode, tok(), noout).startswith("record 'q': missing field(s) output")
    assert "got str" in one_line_error(data.encode, tok(), "hello")


# --- defect 2: the length rule ------------------------------------------------------------------------

def supervised(enc) -> int:
    return sum(t != data.IGNORE_INDEX for t in enc["labels"][1:])


def test_long_prompt_is_cut_from_the_left_and_keeps_the_whole_answer():
    r = rec(input="word " * 60, output="Oslo")
    full = data.encode(tok(), r, 256)
    with pytest.warns(UserWarning, match=r"longer than max_length=16 get their prompt cut from the left, answer kept"):
        enc = data.encode(tok(), r, 16)
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"]) == 16
    assert enc["input_ids"] == full["input_ids"][-16:] and enc["labels"] == full["labels"][-16:]
    n_answer = supervised(full)
    assert supervised(enc) == n_answer > 0
    text = tok().decode(enc["input_ids"])
    assert text.endswith("<|im_start|>assistant\nOslo" + tok().eos_token), text  # header kept, answer whole


def test_max_length_8_prompt_cut_answer_supervised():
    """The issue's case: max_length=8 used to mask every label (loss 0.0); now the answer is learned."""
    with pytest.warns(UserWarning, match="3 of 3 records are longer than max_length=8"):
        ds = data.tokenize([rec(id=str(i), output="yes") for i in range(3)], tok(), 8)
    assert ds.column_names == ["input_ids", "attention_mask", "labels"]
    for row in ds:
        assert len(row["input_ids"]) <= 8 and supervised(row) >= 1
        assert tok().decode([t for t in row["labels"] if t != data.IGNORE_INDEX]) == "yes" + tok().eos_token


def test_answer_that_cannot_fit_is_refused_with_count_and_ids():
    rows = [rec(id="fits", output="ok")] + [rec(id=f"long-{i}", output="word " * 40) for i in range(7)]
    msg = one_line_error(data.tokenize, rows, tok(), 16)
    assert msg.startswith("7 of 8 records cannot fit one answer token in max_length=16")
    assert "long-0, long-1, long-2, long-3, long-4)" in msg and "long-5" not in msg and "fits" not in msg
    need = int(msg.split("raise max_length to ")[1].split(",")[0])
    assert need > 40 and "shorten those records' outputs" in msg
    with pytest.warns(UserWarning):
        assert data.tokenize(rows, tok(), need).num_rows == 8  # the number it names is enough
    msg = one_line_error(data.encode, tok(), rows[1], 16)
    assert msg.startswith("record 'long-0': its answer needs") and "raise max_length to" in msg


def test_kit_data_at_max_length_8_is_refused_not_trained_at_loss_0():
    ds = data.load_split("orders", "validation")
    msg = one_line_error(data.tokenize, ds, tok(), 8)
    assert msg.startswith("200 of 200 records cannot fit") and "orders-validation-" in msg


@pytest.mark.parametrize("bad", [0, -5, 3.5, True, "256", None])
def test_max_length_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_length must be a positive whole number of tokens"):
        data.encode(tok(), rec(), bad)
    with pytest.raises(ValueError, match="max_length must be a positive whole number of tokens"):
        data.tokenize([rec()], tok(), bad)


# --- the Collator: no row without a supervised token, no loss of 0 ---------------------------------

@pytest.mark.parametrize("rows, needle", [
    ([{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [1, 2], "labels": [-100, -100]}],
     "batch row 1 has no supervised token"),
    ([{"input_ids": [5], "labels": [5]}], "batch row 0 has no supervised token"),  # position 0 is never predicted
    ([{"input_ids": [1, 2]}], "batch row 0 needs input_ids and labels"),
    ([{"input_ids": [1, 2, 3], "labels": [-100, 2]}], "3 input_ids and 2 labels"),
    ([{"input_ids": [], "labels": []}], "0 input_ids and 0 labels"),
])
def test_collator_refuses_rows_that_teach_nothing(rows, needle):
    msg = one_line_error(data.Collator(pad_id=0), rows)
    assert needle in msg and "data.encode" in msg


@pytest.mark.parametrize("kwargs, needle", [
    ({"pad_id": None}, "tok.pad_token = tok.eos_token"),
    ({"pad_id": -1}, "pad_id must be a token id"),
    ({"pad_id": 0, "pad_to_multiple_of": 0}, "pad_to_multiple_of must be an int >= 1"),
])
def test_collator_settings(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        data.Collator(**kwargs)


def test_supervised_tokens_counts_after_the_shift():
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    batch = data.Collator(pad_id=0)(rows)
    assert data.supervised_tokens(batch) == 3  # row 0: 2 and 3; row 1: 5 (its first label is never predicted)
