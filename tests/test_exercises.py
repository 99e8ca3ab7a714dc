"""peftlab.exercises: every checker fails on the notebook's stub ("not solved yet", no traceback),
fails on the usual wrong answers with the hint meant for each, and passes on the solution in
notebooks/solutions/ — the file the notebooks point to and nbval runs with PEFTLAB_SOLUTIONS=1.

Compared: a checker's verdict (True/False) and its printed line for the stub, for wrong answers a
learner typically writes (smallest singular values, missing scaling, wrong norm axis, the last
short block dropped, bf16 on a T4, the prompt left unmasked, fp32 weights, the rank sweep mixed in,
a gap inside the seeds' spread, …) and for the solution; the switch (PEFTLAB_SOLUTIONS=1 checks the
solution and says so); the shared `verdict` on hand-made tensors for its generic hints; the
checkers' own references against the package's (showdown.summary, ledger.measured_claims).
"""
import math
import statistics

import pytest
import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

from peftlab import claims, exercises, showdown
from peftlab.exercises import _verdict
from peftlab.exercises import showdown as ex06

CHECKERS = {"check_low_rank": exercises.check_low_rank, "check_forward": exercises.check_forward,
            "check_merge": exercises.check_merge, "check_nf4_levels": exercises.check_nf4_levels,
            "check_constant_bits": exercises.check_constant_bits, "check_block_absmax": exercises.check_block_absmax,
            "check_weight_norm": exercises.check_weight_norm, "check_dora_merge": exercises.check_dora_merge,
            "check_t4_configs": exercises.check_t4_configs, "check_collate": exercises.check_collate,
            "check_lora_terms": exercises.check_lora_terms, "check_qlora_weights": exercises.check_qlora_weights,
            "check_summary": exercises.check_summary, "check_c14_verdict": exercises.check_c14_verdict}
PER_NOTEBOOK = {"01": 3, "02": 3, "03": 2, "04": 2, "05": 2, "06": 2}


@pytest.fixture(autouse=True)
def _learner_mode(monkeypatch):
    """Check the functions given here, not the solutions (conftest turns the switch on for nbval)."""
    monkeypatch.delenv(_verdict.SOLUTIONS_ENV, raising=False)


def _solution(check):
    fn, why = _verdict.load_solution(check.notebook, check.solution)
    assert why is None, why
    return fn


def _fails_with(check, fn, hint, capsys):
    assert check(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and hint in out, out


# --- every checker: stub, solution, the switch ---------------------------------------------------

def test_every_notebook_has_its_exercises():
    count = {}
    for check in CHECKERS.values():
        count[check.notebook[:2]] = count.get(check.notebook[:2], 0) + 1
    assert count == PER_NOTEBOOK
    assert all(2 <= n <= 4 for n in count.values())


@pytest.mark.parametrize("name", CHECKERS)
def test_stub_is_not_solved_yet(name, capsys):
    def stub(*args):
        """The notebook's stub: a hint, then NotImplementedError."""
        raise NotImplementedError("replace this line with your code")

    check = CHECKERS[name]
    assert check(stub) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ not solved yet") and f"notebooks/solutions/{check.notebook}.py" in out, out


@pytest.mark.parametrize("name", CHECKERS)
def test_solution_passes(name, capsys):
    check = CHECKERS[name]
    assert check(_solution(check)) is True
    assert capsys.readouterr().out.startswith("✓ correct")


@pytest.mark.parametrize("name", CHECKERS)
def test_switch_checks_the_solution_not_the_cell(name, capsys, monkeypatch):
    monkeypatch.setenv(_verdict.SOLUTIONS_ENV, "1")

    def stub(*args):
        raise NotImplementedError

    assert CHECKERS[name](stub) is True
    out = capsys.readouterr().out
    assert "PEFTLAB_SOLUTIONS=1: checking the solution" in out and "✓ correct" in out, out


def test_checker_never_raises(capsys):
    assert exercises.check_merge("not a function") is False
    assert exercises.check_collate(lambda ex, pad: 1 / 0) is False
    assert exercises.check_t4_configs(lambda: None) is False
    assert capsys.readouterr().out.count("✗") == 3


# --- the shared verdict --------------------------------------------------------------------------

def test_verdict_generic_hints():
    ref = torch.arange(1.0, 7.0).reshape(2, 3)
    assert _verdict.verdict(ref.clone(), ref) is None
    assert _verdict.verdict(ref + 1e-7, ref) is None
    assert "transposed" in _verdict.verdict(ref.T.contiguous(), ref, layout="(batch, out)")
    assert "expected shape (2, 3)" in _verdict.verdict(torch.zeros(3, 3), ref)
    assert "sign is flipped" in _verdict.verdict(-ref, ref)
    assert "0.5 × the expected" in _verdict.verdict(0.5 * ref, ref)
    assert "values differ" in _verdict.verdict(ref + torch.eye(2, 3), ref)
    assert "torch.Tensor" in _verdict.verdict(ref.tolist(), ref)


def test_verdict_named_mistake_beats_generic_and_may_have_another_shape():
    W = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])            # (out, in)
    row_norm = W.norm(dim=1)                                        # (out,): the reference
    wrong_axis = {"you took the norm over the wrong axis: one norm per output row, dim=1": W.norm(dim=0)}
    assert _verdict.verdict(row_norm, row_norm, wrong_axis) is None
    assert "wrong axis" in _verdict.verdict(W.norm(dim=0), row_norm, wrong_axis)
    missing = {"the scaling is missing": row_norm / 2}
    assert _verdict.verdict(row_norm / 2, row_norm, missing) == "the scaling is missing"


def test_cases_names_the_slip_or_the_first_difference():
    assert _verdict.cases([1.0, 2.0], [1.0, 2.0], ["a", "b"]) is None
    assert _verdict.cases([1.0, 4.0], [1.0, 2.0], ["a", "b"], {"doubled": [2.0, 4.0]}) == "b: expected 2.0, got 4.0"
    assert _verdict.cases([2.0, 4.0], [1.0, 2.0], ["a", "b"], {"doubled": [2.0, 4.0]}) == "doubled"


# --- notebook 01 ---------------------------------------------------------------------------------

def _svd(W):
    return torch.linalg.svd(W, full_matrices=False)


def _svd_top(W, r):
    U, S, Vh = _svd(W)
    return U[:, :r] * S[:r] @ Vh[:r]


def test_low_rank_accepts_another_optimal_route(capsys):
    def via_projection(W, r):  # U_r U_rᵀ W is the same matrix, computed another way
        U = _svd(W)[0][:, :r]
        return U @ (U.T @ W)

    assert exercises.check_low_rank(via_projection)
    assert "✓ correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", [
    (lambda W, r: (lambda U, S, Vh: U[:, -r:] * S[-r:] @ Vh[-r:])(*_svd(W)), "smallest"),
    (lambda W, r: (lambda U, S, Vh: U[:, :r] @ Vh[:r])(*_svd(W)), "singular values are missing"),
    (lambda W, r: W, "returned W itself"),
    (lambda W, r: 2 * _svd_top(W, r), "constant factor"),
    (lambda W, r: _svd_top(W, r).T, "transposed"),
    (lambda W, r: (lambda U, S, Vh: U[:, :r] * S[:r] @ Vh[:, :r])(*_svd(W)), "rows Vh[:r]"),
    (lambda W, r: _svd_top(W, r + 1), "rank"),
])
def test_low_rank_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_low_rank, fn, hint, capsys)


@pytest.mark.parametrize("fn, hint", [
    (lambda x, W, b, A, B, s: x @ W.T + b + x @ A.T @ B.T, "missing the scaling"),
    (lambda x, W, b, A, B, s: s * (x @ W.T + b + x @ A.T @ B.T), "LoRA branch only"),
    (lambda x, W, b, A, B, s: x @ W.T + s * (x @ A.T @ B.T), "bias b is missing"),
    (lambda x, W, b, A, B, s: x @ W.T + b, "only the base layer"),
    (lambda x, W, b, A, B, s: (x @ W.T + b + s * (x @ A.T @ B.T)).T, "transposed"),
    (lambda x, W, b, A, B, s: x @ W.T + b + s * (x @ B @ A), "raised"),
])
def test_forward_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_forward, fn, hint, capsys)


@pytest.mark.parametrize("fn, hint", [
    (lambda W, A, B, alpha, r: W.add_((alpha / r) * (B @ A)), "in place"),
    (lambda W, A, B, alpha, r: W + alpha * (B @ A), "alpha instead of alpha / r"),
    (lambda W, A, B, alpha, r: W + B @ A, "not scaled"),
    (lambda W, A, B, alpha, r: (alpha / r) * (B @ A), "only the update"),
    (lambda W, A, B, alpha, r: W, "unchanged"),
    (lambda W, A, B, alpha, r: W + (alpha / r) * (A.T @ B.T), "raised"),
])
def test_merge_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_merge, fn, hint, capsys)


# --- notebook 02 ---------------------------------------------------------------------------------

def _nf4(offset, n_pos=8, n_neg=7, norm=True, zero=True):
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, n_pos + 1)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, n_neg + 1)[:-1].double())
    v = torch.cat([neg] + ([torch.zeros(1, dtype=torch.float64)] if zero else []) + [pos]).float().sort().values
    return v / v.max() if norm else v


@pytest.mark.parametrize("fn, hint", [
    (lambda o: _nf4(o, norm=False), "divide by the largest level"),
    (lambda o: _nf4(o, 8, 8, zero=False), "asymmetric"),
    (lambda o: _nf4(o, 7, 8), "swapped"),
    (lambda o: _nf4(o).flip(0), "wrong order"),
    (lambda o: _nf4(0.9677083), "do not change with `offset`"),
    (lambda o: torch.special.ndtri(torch.linspace(1 - o, o, 17)), "expected shape (16,) = 16 sorted levels"),
])
def test_nf4_levels_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_nf4_levels, fn, hint, capsys)


@pytest.mark.parametrize("fn, hint", [
    (lambda b, dq: 8 / b if dq else 32 / b, "second-level constants are missing"),
    (lambda b, dq: 8 / b + 32 / 256 if dq else 32 / b, "256 *blocks*"),
    (lambda b, dq: 32 / b, "double_quant is ignored"),
    (lambda b, dq: (8 / b + 32 / (b * 256) if dq else 32 / b) / 8, "bytes, not bits"),
    (lambda b, dq: 4 + (8 / b + 32 / (b * 256) if dq else 32 / b), "only the constants"),
    (lambda b, dq: 8 / 64 + 32 / (64 * 256) if dq else 0.5, "fall as the block grows"),
    (lambda b, dq: "0.5", "return a float"),
])
def test_constant_bits_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_constant_bits, fn, hint, capsys)


def _blocks(w, b):
    flat = w.reshape(-1)
    return flat[: flat.numel() // b * b].reshape(-1, b)


@pytest.mark.parametrize("fn, hint", [
    (lambda w, b: _blocks(w, b).abs().amax(dim=1), "off by one block"),
    (lambda w, b: torch.cat([_blocks(w, b).amax(dim=1), w.reshape(-1)[_blocks(w, b).numel():].amax().view(1)]),
     "absolute value first"),
    (lambda w, b: w.abs().amax(dim=1), "*flattened* tensor"),
    (lambda w, b: w.abs().amax(dim=0), "not over columns"),
    (lambda w, b: w.abs().max().view(1), "whole tensor"),
])
def test_block_absmax_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_block_absmax, fn, hint, capsys)


# --- notebook 03 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, hint", [
    (lambda W, A, B, s: torch.linalg.norm(W + s * B @ A, dim=0), "wrong axis"),
    (lambda W, A, B, s: torch.linalg.norm(W + B @ A, dim=1), "missing its scaling"),
    (lambda W, A, B, s: torch.linalg.norm(W, dim=1), "norm of W alone"),
    (lambda W, A, B, s: torch.linalg.norm(W + s * B @ A), "Frobenius"),
    (lambda W, A, B, s: (W + s * B @ A).pow(2).sum(dim=1), "squared norm"),
    (lambda W, A, B, s: torch.linalg.norm(W + s * B @ A, dim=1, keepdim=True), "keepdim"),
])
def test_weight_norm_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_weight_norm, fn, hint, capsys)


def _V(W, A, B, s):
    return W + s * (B @ A)


@pytest.mark.parametrize("fn, hint", [
    (lambda W, A, B, m, s: m[:, None] * _V(W, A, B, s) / _V(W, A, B, s).norm(dim=0, keepdim=True), "wrong axis"),
    (lambda W, A, B, m, s: m[:, None] * _V(W, A, B, s), "not normalised"),
    (lambda W, A, B, m, s: _V(W, A, B, s), "LoRA merge"),
    (lambda W, A, B, m, s: m[:, None] * _V(W, A, B, s) / W.norm(dim=1, keepdim=True), "norm of W"),
    (lambda W, A, B, m, s: m * _V(W, A, B, s) / _V(W, A, B, s).norm(dim=1, keepdim=True), "m[:, None]"),
    (lambda W, A, B, m, s: W.copy_(m[:, None] * _V(W, A, B, s) / _V(W, A, B, s).norm(dim=1, keepdim=True)),
     "in place"),
])
def test_dora_merge_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_dora_merge, fn, hint, capsys)


# --- notebook 04 ---------------------------------------------------------------------------------

def _configs(bnb=None, lora=None):
    b = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
             bnb_4bit_compute_dtype=torch.float16)
    lo = dict(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    return lambda: (BitsAndBytesConfig(**{**b, **(bnb or {})}), LoraConfig(**{**lo, **(lora or {})}))


@pytest.mark.parametrize("fn, hint", [
    (_configs(dict(bnb_4bit_compute_dtype=torch.bfloat16)), "has no bf16"),
    (_configs(dict(bnb_4bit_compute_dtype=torch.float32)), "torch.float16 on a T4"),
    (_configs(dict(bnb_4bit_quant_type="fp4")), "NF4"),
    (_configs(dict(bnb_4bit_use_double_quant=False)), "double quantization is off"),
    (_configs(dict(load_in_4bit=False, load_in_8bit=True)), "LLM.int8()"),
    (_configs(lora=dict(task_type=None)), "CAUSAL_LM"),
    (_configs(lora=dict(target_modules=["query", "value"])), "not linear layers"),
    (_configs(lora=dict(target_modules=["k_proj"])), "q_proj and v_proj"),
    (_configs(lora=dict(bias="all")), "bias='none'"),
    (lambda: tuple(reversed(_configs()())), "swapped"),
])
def test_t4_configs_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_t4_configs, fn, hint, capsys)


def _collate(examples, pad_id, mask=True, pad_label=-100, left=False, shift=0, width=None):
    rows = [(e["prompt_ids"] + e["answer_ids"],
             ([-100] * (len(e["prompt_ids"]) + shift) + (e["prompt_ids"] + e["answer_ids"])[len(e["prompt_ids"]) + shift:])
             if mask else e["prompt_ids"] + e["answer_ids"]) for e in examples]
    width = width or max(len(i) for i, _ in rows)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in rows:
        pad = width - len(ids)
        if left:
            out["input_ids"].append([pad_id] * pad + ids)
            out["attention_mask"].append([0] * pad + [1] * len(ids))
            out["labels"].append([pad_label] * pad + labels)
        else:
            out["input_ids"].append(ids + [pad_id] * pad)
            out["attention_mask"].append([1] * len(ids) + [0] * pad)
            out["labels"].append(labels + [pad_label] * pad)
    return {k: torch.tensor(v) for k, v in out.items()}


@pytest.mark.parametrize("fn, hint", [
    (lambda ex, p: _collate(ex, p, mask=False), "prompt is not masked"),
    (lambda ex, p: _collate(ex, p, pad_label=p), "padding is labelled with pad_id"),
    (lambda ex, p: _collate(ex, p, shift=1), "first answer token is masked"),
    (lambda ex, p: _collate(ex, p, shift=-1), "last prompt token"),
    (lambda ex, p: _collate(ex, p, left=True), "pad on the right"),
    (lambda ex, p: _collate(ex, p, width=16), "not to a fixed length"),
    (lambda ex, p: {**_collate(ex, p), "attention_mask": torch.ones_like(_collate(ex, p)["attention_mask"])},
     "0 on padding"),
    (lambda ex, p: _collate(ex, 0), "then pad_id"),
    (lambda ex, p: [1, 2], "return a dict"),
])
def test_collate_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_collate, fn, hint, capsys)


# --- notebook 05 ---------------------------------------------------------------------------------

def _terms(arch, rank, targets, w=2, ad=4, states=2, square=False, per_layer=False):
    dims = arch.linears()
    n = sum(rank * (2 * arch.hidden if square else sum(dims[t])) for t in targets) * (1 if per_layer else arch.layers)
    return {"weights": w * arch.n_params(), "trainable params": ad * n, "gradients": ad * n, "optimizer": states * 4 * n}


@pytest.mark.parametrize("kw, hint", [
    (dict(w=4), "'weights' term"),
    (dict(w=4), "2 bytes per parameter"),
    (dict(ad=2, states=1), "fp32 (4 bytes each)"),
    (dict(states=1), "TWO states"),
    (dict(square=True), "GQA"),
    (dict(per_layer=True), "every one of arch.layers"),
    (dict(states=3), "'optimizer' term"),
])
def test_lora_terms_names_the_term_and_the_mistake(kw, hint, capsys):
    _fails_with(exercises.check_lora_terms, lambda a, r, t: _terms(a, r, t, **kw), hint, capsys)


def _qlora(arch, dq, rest=4, consts=True, all_4bit=False, ignore_dq=False):
    lin = sum(i * o for i, o in arch.linears().values()) * arch.layers
    use_dq = dq != ignore_dq
    c = (8 / 64 + 32 / (64 * 256) if use_dq else 0.5) if consts else 0
    return arch.n_params() * (4 + c) / 8 if all_4bit else lin * (4 + c) / 8 + rest * (arch.n_params() - lin)


@pytest.mark.parametrize("kw, hint", [
    (dict(rest=2), "fp32 after PEFT's prepare_model_for_kbit_training"),
    (dict(all_4bit=True), "only the decoder's linear layers"),
    (dict(consts=False), "absmax constants are missing"),
    (dict(ignore_dq=True), "double_quant is ignored"),
    (dict(rest=8), "off by a factor"),
])
def test_qlora_weights_names_the_mistake(kw, hint, capsys):
    _fails_with(exercises.check_qlora_weights, lambda a, dq: _qlora(a, dq, **kw), hint, capsys)


# --- notebook 06 ---------------------------------------------------------------------------------

def _summary(runs, r, std=statistics.stdev, every_rank=False):
    out = {}
    for run in runs:
        if every_rank or run["r"] == r:
            out.setdefault(run["method"], []).append(run["exact_match"])
    return {m: (statistics.fmean(x), std(x) if len(x) > 1 else 0.0) for m, x in out.items()}


@pytest.mark.parametrize("fn, hint", [
    (lambda runs, r: _summary(runs, r, every_rank=True), "rank sweep"),
    (lambda runs, r: _summary(runs, r, std=statistics.pstdev), "population std"),
    (lambda runs, r: _summary(runs, r, std=lambda x: 0.0), "std is missing"),
    (lambda runs, r: {m: v[0] for m, v in _summary(runs, r).items()}, "(mean, std) pair"),
])
def test_summary_names_the_mistake(fn, hint, capsys):
    _fails_with(exercises.check_summary, fn, hint, capsys)


def _c14(lo, do, spread="pooled", relative=True, params=True, upper=True):
    d = do["exact_match"] - lo["exact_match"]
    a, b = lo["exact_match_std"], do["exact_match_std"]
    sd = {"pooled": math.sqrt((a * a + b * b) / 2), "sum": a + b, "none": 0.0}[spread]
    rel = d / lo["exact_match"] if relative else d
    ok = (do["trainable"] == lo["trainable"]) or not params
    if d > sd and 0.05 <= rel and (rel <= 0.15 or not upper) and ok:
        return "holds"
    return "holds with a nuance" if d > sd else "does not hold"


@pytest.mark.parametrize("kw, hint", [
    (dict(spread="none"), "inside the seeds' spread is noise"),
    (dict(spread="sum"), "not the sum of the two stds"),
    (dict(relative=False), "relative to LoRA's score"),
    (dict(params=False), "same parameter count"),
    (dict(upper=False), "upper end"),
])
def test_c14_verdict_names_the_mistake(kw, hint, capsys):
    _fails_with(exercises.check_c14_verdict, lambda lo, do: _c14(lo, do, **kw), hint, capsys)


def test_c14_verdict_rejects_other_words(capsys):
    _fails_with(exercises.check_c14_verdict, lambda lo, do: "true", "return one of", capsys)


def test_references_agree_with_showdown_and_ledger():
    """The checkers' own rules (summary, C14) are the package's: same numbers, same verdicts."""
    path = showdown.RESULTS_DIR / "showdown_cpu.json"
    if not path.is_file():
        pytest.skip(f"{path} not committed")
    results = showdown.load(path)
    rows = showdown.summary(results, r=8)
    mine = ex06.summarize(results["runs"], 8)
    for row in rows:
        mean, sd = mine[row["method"]]
        assert math.isclose(mean, row["exact_match"]) and math.isclose(sd, row["exact_match_std"])
    by = {x["method"]: x for x in rows}
    for em, sd, extra in [(None, None, None), (0.70, 0.01, 0), (0.70, 0.01, 7), (0.95, 0.01, 0), (0.55, 0.01, 0)]:
        dora = dict(by["dora"])
        if em is not None:
            dora.update(exact_match=em, exact_match_std=sd, trainable=by["lora"]["trainable"] + extra)
        lo_row, do_row = by["lora"], dora
        numbers = dict(dora_em=do_row["exact_match"], dora_std=do_row["exact_match_std"],
                       lora_em=lo_row["exact_match"], lora_std=lo_row["exact_match_std"],
                       extra_params=do_row["trainable"] - lo_row["trainable"], step_ratio=1.0)
        want = claims.verdict("C14", numbers)[0]  # the ledger's one rule for C14
        assert ex06.c14_verdict(by["lora"], dora) == want, (em, sd, extra)
