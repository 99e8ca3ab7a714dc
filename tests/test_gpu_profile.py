"""The `gpu` profile without a GPU: its model choice, the batch-moving helper, and the notebooks.

Compared: `settings.gpu_model` against the GPU_MODELS table for free-memory values around each
threshold and both states of the download switch; `settings.resolve("gpu")` on a faked CUDA device
(is_available, mem_get_info and the capability patched) against the same table, the offline
fallback and its one-line notice; `models.to_device` against batches moved by hand (to the `meta`
device, which a CPU-only build has); and every code cell of notebooks 00–06 against a list of the
embedded model's dimensions typed in as literals (they must be read from the model) and against
`load_model` / `load_tokenizer` calls that forget the profile's model or device.
"""
import ast
import pathlib
import re

import nbformat
import pytest
import torch
from transformers import BatchEncoding

from peftlab import models, settings

GiB = 2**30
NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# --- the model the gpu profile picks ---------------------------------------------------------------

@pytest.mark.parametrize("free_gib, downloads, expected", [
    (14.5, True, "Qwen/Qwen2.5-0.5B-Instruct"),    # a T4 on Colab
    (12.0, True, "Qwen/Qwen2.5-0.5B-Instruct"),    # exactly the threshold
    (11.9, True, "embedded"),                      # too little memory for the smallest entry
    (39.4, True, "Qwen/Qwen2.5-1.5B-Instruct"),    # an A100 40 GB
    (79.0, True, "Qwen/Qwen2.5-1.5B-Instruct"),    # an A100 80 GB: the largest entry
    (79.0, False, "embedded"),                     # offline: no download, whatever the memory
    (0, True, "embedded"),
])
def test_gpu_model_by_free_memory_and_downloads(free_gib, downloads, expected):
    assert settings.gpu_model(int(free_gib * GiB), downloads) == expected


def test_gpu_models_table_is_largest_first():
    needs = [need for need, _ in settings.GPU_MODELS]
    assert needs == sorted(needs, reverse=True) and all(name.count("/") == 1 for _, name in settings.GPU_MODELS)


@pytest.mark.parametrize("bad", [-1, 1.5, "16GB", None, True])
def test_gpu_model_refuses_a_bad_byte_count(bad):
    with pytest.raises(ValueError, match="mem_get_info"):
        settings.gpu_model(bad, True)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device as settings.resolve sees it: present, 7.5 (a T4), `free` bytes free."""
    def install(free_gib: float):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(free_gib * GiB), 16 * GiB))
    monkeypatch.delenv("PEFTLAB_MODEL", raising=False)
    settings._notice.cache_clear()
    yield install
    settings._notice.cache_clear()


def test_gpu_profile_takes_the_bigger_model_online(fake_cuda, monkeypatch, capsys):
    fake_cuda(14.5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    prof = settings.resolve("gpu")
    assert (prof.device, prof.compute_dtype, prof.model) == ("cuda", "fp16", "Qwen/Qwen2.5-0.5B-Instruct")
    assert capsys.readouterr().err == ""
    assert settings.resolve("smoke").model == "embedded"   # only the gpu profile changes the model


def test_gpu_profile_falls_back_offline_with_one_line(fake_cuda, monkeypatch, capsys):
    fake_cuda(79)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert settings.resolve("gpu").model == "embedded"
    assert settings.resolve("gpu").model == "embedded"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "embedded" in err and "HF_HUB_OFFLINE" in err and "PEFTLAB_MODEL" in err


def test_named_model_wins_over_the_table(fake_cuda, monkeypatch, capsys):
    fake_cuda(79)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("PEFTLAB_MODEL", "embedded")
    assert settings.resolve("gpu").model == "embedded"
    monkeypatch.setenv("PEFTLAB_MODEL", "my/model")
    assert settings.resolve("gpu").model == "my/model"
    assert settings.resolve("gpu", model="other/model").model == "other/model"
    assert capsys.readouterr().err == ""


# --- models.to_device --------------------------------------------------------------------------------

def test_to_device_moves_every_tensor_and_keeps_the_rest():
    batch = BatchEncoding({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3),
                           "meta": "keep me"})
    moved = models.to_device(batch, "meta")
    assert moved["input_ids"].device.type == "meta" and moved["attention_mask"].device.type == "meta"
    assert moved["input_ids"].dtype == torch.long and moved["meta"] == "keep me"
    assert batch["input_ids"].device.type == "cpu"                       # a new batch; the old one stays
    nested = models.to_device([torch.zeros(1), (torch.zeros(1), 3)], torch.device("meta"))
    assert nested[0].device.type == nested[1][0].device.type == "meta" and nested[1][1] == 3
    assert models.to_device(torch.zeros(2), "meta").device.type == "meta"


def test_to_device_follows_the_models_input_embeddings():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(2, 2)                          # on the CPU
            self.emb = torch.nn.Embedding(5, 2, device="meta")         # where inputs must go

        def get_input_embeddings(self):
            return self.emb

    assert models.to_device({"input_ids": torch.zeros(1, 2, dtype=torch.long)}, Tiny())["input_ids"].is_meta
    assert models.to_device(torch.zeros(1), torch.nn.Linear(1, 1, device="meta")).is_meta  # first parameter
    with pytest.raises(ValueError, match="no parameters"):
        models.to_device(torch.zeros(1), torch.nn.ReLU())


# --- the notebooks read dimensions from the model ------------------------------------------------------

# The embedded SmolLM2-135M's hidden size, intermediate size and vocabulary (docs/findings.md), and
# phrases that state its size or depth. Markdown may name them; code must read them from the model.
LITERAL_DIMS = {576, 1536, 49152}
LITERAL_TEXT = re.compile(r"135M|SmolLM2-135|(?<![\w.])(576|1536|49152)(?![\w.])|\b30 (decoder )?(layers|blocks)\b")


def _code_cells(path):
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("!", "%")))
            yield f"{path.name} cell {i} ({cell.get('id', '?')})", ast.parse(source)


def _literal_dims(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value in LITERAL_DIMS:
            yield f"line {node.lineno}: the number {node.value}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and LITERAL_TEXT.search(node.value):
            yield f"line {node.lineno}: the text {LITERAL_TEXT.search(node.value).group(0)!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_reads_model_dimensions_from_the_model(path):
    found = [f"{where}, {what}" for where, tree in _code_cells(path) for what in _literal_dims(tree)]
    assert not found, ("the embedded model's dimensions are typed into code (read them from model.config or "
                       "the weights, so PEFTLAB_MODEL and the gpu profile's model work):\n" + "\n".join(found))


def _loads_without_model_or_device(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            named = bool(node.args) or any(k.arg == "name" for k in node.keywords)
            if node.func.attr in ("load_model", "load_tokenizer") and not named:
                yield f"line {node.lineno}: {node.func.attr}() without a model (loads $PEFTLAB_MODEL, not the profile's)"
            if node.func.attr == "load_model" and not any(k.arg == "device" for k in node.keywords):
                yield f"line {node.lineno}: load_model() without device= (goes to CUDA whatever the profile)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_load_the_profiles_model_on_a_named_device(path):
    found = [f"{where}, {what}" for where, tree in _code_cells(path) for what in _loads_without_model_or_device(tree)]
    assert not found, "pass profile.model (or cfg.model) and device=:\n" + "\n".join(found)


def test_the_scan_catches_a_typed_in_dimension():
    tree = ast.parse('x = torch.randn(4, 576)\nprint(f"the embedded 135M model")  # 49152 in a comment is fine')
    assert [w.split(":")[0] for w in _literal_dims(tree)] == ["line 1", "line 2"]
    assert len(list(_loads_without_model_or_device(ast.parse("m = models.load_model(dtype=torch.float32)")))) == 2
