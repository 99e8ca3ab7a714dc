"""The claims ledger (peftlab.ledger, peftlab.claims): verdicts come from results files, never typed.

Compared: each rule's verdict against numbers on both sides of its stated threshold; `record`'s file
(format, merge of several notebooks, atomic write, smoke results kept out of the committed folder);
the README's generated table against the committed results files (and a changed file makes the
check fail); no verdict string literal in ledger.py, claims.py or a notebook outside `claims.verdict`.
"""
import ast
import json
import pathlib
import re
import shutil

import nbformat
import pytest

from peftlab import claims, ledger

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = ("holds", "holds with a nuance", "does not hold")


def _rows(dora_em=(0.8, 0.82, 0.84), qlora_mem=500, dora_step=1.5, dora_trainable=110):
    def row(method, em, mem, step, trainable):
        return dict(method=method, r=8, exact_match=sum(em) / 3, exact_match_std=0.02, peak_cuda=0,
                    mem_counted=mem, median_step_s=step, trainable=trainable, total=10_000)
    return [row("lora", (0.5, 0.52, 0.54), 1000, 1.0, 100), row("qlora", (0.5, 0.52, 0.54), qlora_mem, 1.2, 100),
            row("dora", dora_em, 1020, dora_step, dora_trainable)]


# --- rules -----------------------------------------------------------------------------------------

def test_every_claim_has_a_rule_with_words():
    assert list(claims.RULES) == list(claims.CLAIMS) == [f"C{i}" for i in range(1, 19)]
    assert all(r.rule and r.needs and r.notebooks for r in claims.RULES.values())


@pytest.mark.parametrize("mixed, want", [(60, "holds"), (110, "holds with a nuance"), (30, "does not hold")])
def test_c1_is_decided_on_mixed_precision(mixed, want):
    v, text = claims.verdict("C1", dict(full_mixed_gb=mixed, full_bf16_gb=56))
    assert v == want and "mixed precision" in text


def test_c2_names_the_methods_it_holds_for():
    v, text = claims.verdict("C2", dict(fits_16gb={"lora": False, "qlora": True}, need_gb={"lora": 17, "qlora": 7}))
    assert v == "holds with a nuance" and "for qlora only" in text


def test_c16_is_not_refuted_by_a_short_budget():
    short = dict(seed_em=0.0, kit_em=1.0, base_em=0.0, examples_seen=320, kit_lr=1e-3)
    v, text = claims.verdict("C16", short)
    assert v == "holds with a nuance" and "too slow to learn within a short CPU budget" in text
    assert claims.verdict("C16", {**short, "examples_seen": 20_000})[0] == "does not hold"
    assert claims.verdict("C16", {**short, "seed_em": 0.95})[0] == "holds"


def test_c10_fails_when_a_seed_cell_is_too_low():
    cells = {"llama-2-7b": {"seed": [60, 30, 10], "est": [110, 16, 8], "full_bf16": 56}}
    v, text = claims.verdict("C10", {"cells": cells})
    assert v == "does not hold" and "7B full 60 vs 110" in text
    ok = {"llama-2-7b": {"seed": [60, 30, 10], "est": [60, 30, 10], "full_bf16": 56}}
    assert claims.verdict("C10", {"cells": ok})[0] == "holds"


def test_missing_numbers_and_unknown_claims_say_what_to_do():
    with pytest.raises(ValueError, match="needs full_bf16_gb .*notebook 05"):
        claims.verdict("C1", dict(full_mixed_gb=60))
    with pytest.raises(ValueError, match="C1–C18"):
        claims.verdict("C19", {})


# --- the showdown's rows --------------------------------------------------------------------------

def test_star_cells_follow_the_measurement():
    good = {(c["aspect"], c["method"]): c["agrees"] for c in ledger.star_cells(_rows())}
    assert good[("memory efficiency", "qlora")] == "yes"       # 0.5× LoRA
    assert good[("memory efficiency", "dora")] == "yes"        # 1.02× LoRA: same stars
    assert good[("performance", "dora")] == "yes"              # +0.30 ≫ spread 0.02
    assert good[("training speed", "dora")] == "yes"           # 1.5× LoRA's step time: "medium"
    assert good[("performance", "lora")] == "reference"
    bad = {(c["aspect"], c["method"]): c["agrees"]
           for c in ledger.star_cells(_rows(dora_em=(0.5, 0.52, 0.54), qlora_mem=990, dora_step=1.0))}
    assert bad[("memory efficiency", "qlora")] == bad[("performance", "dora")] == "no"


def test_showdown_numbers_decide_c14_c15_c18():
    nums = ledger.showdown_numbers(_rows(), need_gb={"lora": 20, "qlora": 8, "dora": 20})
    assert set(nums) == {"C5", "C12", "C14", "C15", "C18"}
    assert claims.verdict("C14", nums["C14"])[0] == "holds with a nuance"    # beyond noise, +58%, +10 params
    same = ledger.showdown_numbers(_rows(dora_em=(0.5, 0.53, 0.56), dora_trainable=100))
    assert claims.verdict("C14", same["C14"])[0] == "does not hold"         # +0.03 is within the spread
    assert nums["C15"]["cells_total"] == 10 and "C15" not in ledger.showdown_numbers(_rows()[:1])


# --- files ----------------------------------------------------------------------------------------

def test_record_writes_merges_and_renders(tmp_path):
    line = ledger.record("C12", {"qlora_over_lora": {"llama-65b": 0.33}}, "05", directory=tmp_path)
    assert line.startswith("C12 ") and "holds" in line
    ledger.record("C12", {"weights_small": 0.42}, "00", directory=tmp_path)
    doc = json.loads((tmp_path / "C12.json").read_text())
    assert doc["claim"] == "C12" and doc["notebook"] == "00, 05" and doc["profile"] == "smoke"
    assert set(doc["numbers"]) == {"qlora_over_lora", "weights_small"} and doc["versions"]["torch"] and doc["date"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # no temp file left
    rows = {r["id"]: r for r in ledger.table(tmp_path)}
    assert rows["C12"]["verdict"] in WORDS and rows["C1"]["verdict"] == ledger.NOT_MEASURED
    with pytest.raises(ValueError, match="C1–C18"):
        ledger.record("C42", {"x": 1}, "00", directory=tmp_path)


def test_smoke_results_stay_out_of_the_committed_folder():
    assert ledger.claims_dir("cpu") == ledger.RESULTS
    assert ledger.claims_dir("smoke") == ledger.RESULTS / "smoke"
    assert "smoke/" in (ledger.RESULTS / ".gitignore").read_text()


def test_committed_results_are_complete_and_well_formed():
    docs = ledger.load(ledger.RESULTS)
    for cid, doc in docs.items():
        assert doc["claim"] == cid and doc["profile"] == "cpu" and doc["source"] and doc["numbers"]
    measured = [r for r in ledger.table(ledger.RESULTS) if r["verdict"] != ledger.NOT_MEASURED]
    assert len(measured) >= 16, [r["id"] for r in ledger.table(ledger.RESULTS) if r not in measured]


@pytest.mark.parametrize("name", ["README.md", "README.ko.md"])
def test_readme_table_matches_the_results_files(tmp_path, name):
    assert ledger.sync_readme(ROOT / name, ledger.RESULTS, check=True), \
        f"{name}'s ledger differs from results/claims: run python scripts/render_ledger.py"
    # a changed results file must make the check fail
    res = tmp_path / "claims"
    shutil.copytree(ledger.RESULTS, res)
    readme = tmp_path / name
    shutil.copy(ROOT / name, readme)
    assert ledger.sync_readme(readme, res, check=True)
    doc = json.loads((res / "C11.json").read_text())
    doc["numbers"]["qlora13b_gb"] += 1.0
    (res / "C11.json").write_text(json.dumps(doc))
    assert not ledger.sync_readme(readme, res, check=True)
    ledger.sync_readme(readme, res)                       # regenerating brings them back together
    assert ledger.sync_readme(readme, res, check=True)



# --- the Korean README (README.ko.md): the seed's original sentence beside each verdict ---------------

def test_render_script_checks_both_readmes(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("render_ledger", ROOT / "scripts" / "render_ledger.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert [p.name for p in ledger.READMES] == ["README.md", "README.ko.md"]
    assert script.main(["--check"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "README.md: ledger table up to date" in out and "README.ko.md: ledger table up to date" in out


def test_every_claim_has_its_korean_original():
    ko = ledger.originals()
    assert list(ko) == list(claims.CLAIMS)
    for cid, sentence in ko.items():
        assert sentence.strip() and re.search("[가-힣]", sentence), f"{cid}: no Korean original"


def test_korean_originals_are_the_ones_docs_claims_shows():
    doc = (ROOT / "docs" / "claims.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.ko.md").read_text(encoding="utf-8")
    table = readme.split(ledger.BEGIN, 1)[1].split(ledger.END, 1)[0]
    assert "| id | 주장 (시드 원문) | 판정 |" in table
    for cid, sentence in ledger.originals().items():
        cell = sentence.replace("|", "\\|")                  # as a Markdown table cell writes it
        assert f"\n| {cid} | {cell} | " in doc, f"{cid}: differs from docs/claims.md"
        assert f"\n| {cid} | {cell} | " in table, f"{cid}: README.ko.md's row lacks the seed's sentence"
    for verdict_word in {r["verdict"] for r in ledger.table(ledger.RESULTS)}:     # verdicts stay English
        assert f" | {verdict_word} | " in table


def test_originals_name_a_missing_claim(tmp_path):
    doc = tmp_path / "claims.md"
    doc.write_text((ROOT / "docs" / "claims.md").read_text(encoding="utf-8").replace("| C7 |", "| Cx |"),
                   encoding="utf-8")
    with pytest.raises(ValueError, match="no Korean original for C7"):
        ledger.originals(doc)
    with pytest.raises(ValueError, match="unknown README language 'fr'"):
        ledger.readme_block(lang="fr")

# --- no typed verdicts ----------------------------------------------------------------------------

def _string_literals_outside_verdict(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "verdict":
            inside |= {id(n) for n in ast.walk(node)}
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in inside and id(n) not in docs and n.value.strip() in WORDS]


@pytest.mark.parametrize("module", ["ledger.py", "claims.py"])
def test_no_verdict_literal_outside_the_deriving_function(module):
    assert _string_literals_outside_verdict(ROOT / "peftlab" / module) == []


def test_walker_finds_a_typed_verdict(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def verdict():\n    return "holds"\n\nX = "does not hold"\n')
    assert _string_literals_outside_verdict(bad) == ["does not hold"]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_type_no_verdict(path):
    quoted = re.compile(r"""["'](holds|holds with a nuance|does not hold)\b""")
    typed = re.compile(r"\*\*(holds|holds with a nuance|does not hold)\*\*|\bholds with a nuance\b|\bdoes not hold\b")
    for cell in nbformat.read(path, as_version=4).cells:
        pattern = quoted if cell.cell_type == "code" else typed
        assert not pattern.search(cell.source), f"{path.name} cell {cell.get('id')} types a verdict"
