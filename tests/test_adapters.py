"""peftlab.adapters: an atomic adapter save vs a crash mid-save (the earlier adapter survives);
saving never deletes what it did not write (a training output_dir, your own files, a file at the
path: refused with one line, every file still there); the newest complete checkpoint vs
half-written ones and copies; the 4-bit merge (dequantize, then merge) vs the adapter on the
4-bit base (same logits). Real embedded model for the merge, tiny batches."""
from __future__ import annotations

import pytest
import torch

from peftlab import adapters, data, recipe, train


class Fake:
    """save_pretrained like PEFT's: adapter_config.json + adapter_model.safetensors."""

    def __init__(self, crash=False, text="new"):
        self.crash, self.text = crash, text

    def save_pretrained(self, d):
        (d / "adapter_config.json").write_text("{}")
        (d / "adapter_model.safetensors").write_text("half" if self.crash else self.text)
        if self.crash:
            raise OSError("disk full")


def test_save_adapter_is_atomic(tmp_path):
    path = adapters.save_adapter(Fake(), tmp_path / "adapter", log=None)
    with pytest.raises(OSError):
        adapters.save_adapter(Fake(crash=True), path, log=None)
    assert (path / "adapter_model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left behind
    lines = []
    adapters.save_adapter(Fake(text="newer"), path, log=lines.append)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert (path / "adapter_model.safetensors").read_text() == "newer"
    assert len(lines) == 1 and "replacing the earlier save" in lines[0] and str(path) in lines[0]


@pytest.mark.parametrize("other", ["checkpoint-2", "notes.txt"])
def test_save_never_deletes_files_it_did_not_write(tmp_path, other):
    out = tmp_path / "run"                       # e.g. a Trainer output_dir
    out.mkdir()
    (out / other).mkdir() if other.startswith("checkpoint") else (out / other).write_text("mine")
    (out / "adapter_config.json").write_text("{}")  # even next to an earlier adapter
    with pytest.raises(ValueError) as err:
        adapters.save_adapter(Fake(), out, log=None)
    msg = str(err.value)
    assert "\n" not in msg and other in msg and "save into a new or empty folder" in msg
    assert (out / other).exists() and (out / "adapter_config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    adapters.save_adapter(Fake(), out / "adapter", log=None)  # the fix the message suggests works
    assert (out / other).exists() and (out / "adapter" / "adapter_model.safetensors").is_file()


def test_save_onto_a_file_is_refused_and_the_file_kept(tmp_path):
    f = tmp_path / "adapter"
    f.write_text("my notes")
    for _ in range(2):                           # a second try used to raise NotADirectoryError
        with pytest.raises(ValueError, match="is a file, not a folder: save the adapter to a new folder") as err:
            adapters.save_adapter(Fake(), f, log=None)
        assert "\n" not in str(err.value)
    assert f.read_text() == "my notes" and [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with pytest.raises(ValueError, match="is a file, so .* cannot be a folder"):
        adapters.save_adapter(Fake(), f / "sub", log=None)


def test_save_into_an_empty_folder(tmp_path):
    (tmp_path / "a").mkdir()
    lines = []
    adapters.save_adapter(Fake(), tmp_path / "a", log=lines.append)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_text() == "new"
    assert "replacing" not in lines[0]


def test_last_checkpoint_skips_half_written_and_copies(tmp_path):
    assert adapters.last_checkpoint(tmp_path / "none") is None
    for name, done in (("checkpoint-2", True), ("checkpoint-3", False), ("checkpoint-10 (copy)", True)):
        (tmp_path / name).mkdir()
        if done:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    assert adapters.last_checkpoint(tmp_path).endswith("checkpoint-2")


def test_merge_4bit_equals_adapter_on_4bit_base(embedded_ready, tmp_path):
    records = data.validate_file(data.task_path("orders", "test"))[:3]
    cfg = recipe.recipe(method="qlora", target_modules=("q_proj", "v_proj"), compute_dtype="fp32")
    model, tok = train.build_model(cfg)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # B = 0 at init would make any merge look right
    adapters.save_adapter(model, tmp_path / "a", log=None)
    merged = adapters.merge_4bit(tmp_path / "a", cfg)
    batch = data.Collator(tok.pad_token_id)([data.encode(tok, r) for r in records])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = model.get_base_model()
        with model.disable_adapter():
            plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (want - plain).abs().max() > 0.1  # the adapter changes the outputs...
    assert (want - got).abs().max() < 2e-3   # ...and the merged dense model reproduces them


def test_dequantized_base_computes_what_the_4bit_base_computes(embedded_ready):
    """Notebook 04 scores its trained model on this dense copy on a CPU: it must give the 4-bit
    base's logits (fp32 compute: rounding only) and the same greedy answers."""
    from peftlab import evaluate, models

    records = data.validate_file(data.task_path("orders", "test"))[:3]
    cfg = recipe.recipe(method="qlora", compute_dtype="fp32")
    q = models.load_model(cfg.model, bits=4, quant_type=cfg.quant_type, double_quant=cfg.double_quant,
                          dtype=torch.float32, device=cfg.device)
    dense = adapters.dequantized_base(cfg)
    bnb = models.import_bitsandbytes()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in dense.modules())
    tok = models.load_tokenizer(cfg.model)
    batch = data.Collator(tok.pad_token_id)([data.encode(tok, r) for r in records])
    with torch.no_grad():
        want = q(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = dense(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = models.load_model(cfg.model, dtype=torch.float32)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (want - full).abs().max() > 0.1   # 4-bit differs from the original weights...
    assert (want - got).abs().max() < 2e-3   # ...and the dense copy reproduces the 4-bit base
    assert evaluate.generate(dense, tok, records, max_new_tokens=8) == evaluate.generate(q, tok, records, max_new_tokens=8)
