"""The claims ledger: every seed claim (C1–C18) with the verdict its measured numbers decide.

    notebook → record(claim, numbers) → results/claims/<id>.json → claims.verdict → table / README

One results format: {"claim", "numbers" (the deciding numbers), "notebook", "profile", "versions",
"date", "source"}. A claim measured in several notebooks (C5: 00, 01, 06) gathers their numbers in
one file. Where the files live depends on the profile: cpu in results/claims/ (committed), gpu in
results/claims/gpu/, smoke in results/claims/smoke/ (git-ignored, so tests never rewrite committed
results). No verdict is typed here: `claims.verdict` is the only place that writes one.

Public API (notebooks, scripts/render_ledger.py and the README check call these):
    record(claim, numbers, notebook, source=None, directory=None) -> str;  claims_dir(profile) -> Path
    load(directory) -> {id: file};  table(directory) -> list[dict];  markdown_table(rows, columns) -> str
    readme_block(directory, lang="en") -> str;  sync_readme(readme, directory, check=False, lang=None) -> bool
    originals(doc=None) -> {id: the seed's original Korean sentence} (read from docs/claims.md, their one home)
The Korean README (README.ko.md) gets the same table with the seed's original sentence beside each verdict;
verdicts and deciding numbers stay in English there (they are the words and text the rules compute).
    star_cells(rows), gpu_need_cells(need_gb), showdown_numbers(rows, need_gb) (notebook 06)
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import tempfile
from importlib import metadata
from pathlib import Path

from . import settings
from .claims import CLAIMS, RULES, STARS, verdict

__all__ = ["CLAIMS", "RULES", "STARS", "verdict", "record", "claims_dir", "load", "table", "markdown_table",
           "readme_block", "sync_readme", "originals", "READMES", "star_cells", "gpu_need_cells", "showdown_numbers", "NOT_MEASURED"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "claims"
CLAIMS_DOC = ROOT / "docs" / "claims.md"            # the seed's original Korean sentences live here only
READMES = (ROOT / "README.md", ROOT / "README.ko.md")   # the READMEs that carry the ledger table
BEGIN, END = "<!-- ledger:begin (generated: python scripts/render_ledger.py) -->", "<!-- ledger:end -->"
NOT_MEASURED = "not measured in this profile yet"
_LIBS = ("torch", "transformers", "peft", "bitsandbytes")


def claims_dir(profile: str | None = None) -> Path:
    """Where a profile's results files live (default: the current profile's)."""
    name = profile or settings.profile().name
    if name not in ("smoke", "cpu", "gpu"):
        raise ValueError(f"unknown profile {name!r}: use smoke, cpu or gpu")
    return RESULTS if name == "cpu" else RESULTS / name


def _round(x):
    """Four significant digits for floats (no churn in committed files from the last bits)."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def record(claim: str, numbers: dict, notebook: str, source: str | None = None,
           directory: str | Path | None = None) -> str:
    """Write the numbers that decide `claim` to <directory>/<claim>.json (default: the profile's folder),
    merged with numbers other notebooks wrote there, atomically (temp file, then rename); returns the
    ledger line for it ("C1 …: verdict — deciding text", or what is still missing)."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}: use one of C1–C18")
    if not isinstance(numbers, dict) or not numbers:
        raise ValueError("numbers must be a non-empty dict of the values that decide the claim")
    profile = settings.profile().name
    folder = Path(directory) if directory is not None else claims_dir(profile)
    path = folder / f"{claim}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**old.get("numbers", {}), **_round(numbers)}
    nbs = sorted(set(filter(None, old.get("notebook", "").split(", "))) | {notebook})
    json.loads(json.dumps(merged))                        # numbers must be JSON (raises TypeError otherwise)
    if merged != old.get("numbers") or ", ".join(nbs) != old.get("notebook"):
        doc = {"claim": claim, "numbers": merged, "notebook": ", ".join(nbs), "profile": profile,
               "versions": _versions(), "date": datetime.date.today().isoformat(),
               "source": source or f"notebook {notebook} ({profile} profile)"}
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{claim}-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    row = _row(claim, {"numbers": merged, "notebook": ", ".join(nbs)})
    return f"{claim} {CLAIMS[claim]}: {row['verdict']} — {row['number']}"


def load(directory: str | Path | None = None) -> dict[str, dict]:
    """{claim id: the file's content} for every results file in `directory` (default: this profile's)."""
    folder = Path(directory) if directory is not None else claims_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("C*.json"))}


def _row(cid: str, doc: dict | None) -> dict:
    rule = RULES[cid]
    if doc is None:
        return dict(id=cid, claim=CLAIMS[cid], verdict=NOT_MEASURED, number=f"run notebook {rule.notebooks}",
                    notebook=rule.notebooks)
    try:
        v, text = verdict(cid, doc["numbers"])
    except ValueError as e:
        v, text = NOT_MEASURED, str(e)
    return dict(id=cid, claim=CLAIMS[cid], verdict=v, number=text, notebook=doc["notebook"])


def table(directory: str | Path | None = None) -> list[dict]:
    """C1–C18 in order: id, claim, verdict, deciding number, notebook — from the results files."""
    docs = load(directory)
    return [_row(cid, docs.get(cid)) for cid in CLAIMS]


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """A Markdown table of `rows` with {key: header} columns (values already formatted or str()-ed)."""
    head = "| " + " | ".join(columns.values()) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(k, "")).replace("|", "\\|") for k in columns) + " |\n"
                          for r in rows)


def originals(doc: str | Path | None = None) -> dict[str, str]:
    """{claim id: the seed's original Korean sentence}, read from the tables of docs/claims.md (column 2,
    "the seed, in Korean (verbatim)"), the one place the kit keeps them; `\\|` in a cell reads as `|`."""
    path = Path(doc) if doc is not None else CLAIMS_DOC
    if not path.is_file():
        raise ValueError(f"{path} not found: the Korean ledger reads the seed's sentences from docs/claims.md")
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) >= 2 and cells[0] in CLAIMS:
            out[cells[0]] = cells[1]
    missing = [cid for cid in CLAIMS if not out.get(cid)]
    if missing:
        raise ValueError(f"{path} gives no Korean original for {', '.join(missing)}: add a table row "
                         "'| <id> | <the seed's sentence, verbatim> | <English> | <checked in> |'")
    return out


_COLUMNS = {"en": dict(id="id", claim="claim", verdict="verdict", number="deciding numbers", notebook="notebook"),
            "ko": dict(id="id", original="주장 (시드 원문)", verdict="판정", number="판정 근거 수치", notebook="노트북")}


def readme_block(directory: str | Path | None = None, lang: str = "en") -> str:
    """The README's ledger table, generated from the results files of `directory` (default: cpu);
    lang="ko" puts the seed's original Korean sentence (`originals`) in place of the English summary."""
    if lang not in _COLUMNS:
        raise ValueError(f"unknown README language {lang!r}: use one of {', '.join(_COLUMNS)}")
    rows = table(directory if directory is not None else RESULTS)
    if lang == "ko":
        ko = originals()
        rows = [{**r, "original": ko[r["id"]]} for r in rows]
    return markdown_table(rows, _COLUMNS[lang])


def sync_readme(readme: str | Path, directory: str | Path | None = None, check: bool = False,
                lang: str | None = None) -> bool:
    """Put `readme_block` between the ledger markers of `readme`; with check=True only compare.
    The language defaults to the file name's (README.ko.md → "ko", otherwise "en").
    Returns True when the README already agreed with the files."""
    path = Path(readme)
    lang = lang or ("ko" if path.name.endswith(".ko.md") else "en")
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no ledger markers: add the lines {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{readme_block(directory, lang)}{END}{tail}"
    if new != text and not check:
        path.write_text(new, encoding="utf-8")
    return new == text


# --- notebook 06: the showdown's rows → the numbers of C5, C12, C14, C15, C18 -----------------

def _mem(x: dict) -> float:
    return x["peak_cuda"] or x["mem_counted"]


def star_cells(rows: list[dict], tol: float = 0.10) -> list[dict]:
    """Each measurable C15 cell against the measurement: the seed's rating, what we measured, whether they agree.

    LoRA is the ★★★ reference. A cell agrees when the measured ordering against LoRA has the
    rating's direction: better beyond `tol` (relative) for more stars, within `tol` for equal stars;
    for scores, "beyond" means more than the seeds' spread (one pooled std); "medium" speed = slower
    than LoRA by more than `tol`, LoRA "fast" = no slower than (1 + tol)× the others."""
    by = {x["method"]: x for x in rows}
    if not {"lora", "qlora", "dora"} <= set(by):
        raise ValueError("star_cells needs lora, qlora and dora rows at one rank (showdown.summary(results, r=8))")
    base, out = by["lora"], []
    for m in ("lora", "qlora", "dora"):
        x = by[m]
        rel_mem, rel_t = _mem(x) / _mem(base), x["median_step_s"] / base["median_step_s"]
        d_em = x["exact_match"] - base["exact_match"]
        spread = math.sqrt((x["exact_match_std"] ** 2 + base["exact_match_std"] ** 2) / 2) or 0.01
        cells = {
            "memory efficiency": (f"{_mem(x) / 2**20:.0f} MiB ({rel_mem:.2f}× LoRA)",
                                  rel_mem < 1 - tol if m == "qlora" else abs(rel_mem - 1) <= tol),
            "performance": (f"EM {x['exact_match']:.2f} ± {x['exact_match_std']:.2f}",
                            d_em > spread if m == "dora" else abs(d_em) <= spread),
            "training speed": (f"{x['median_step_s']:.2f} s/step ({rel_t:.2f}× LoRA)",
                               rel_t > 1 + tol if m != "lora" else
                               x["median_step_s"] <= (1 + tol) * min(by["qlora"]["median_step_s"],
                                                                     by["dora"]["median_step_s"])),
        }
        for aspect, (measured, ok) in cells.items():
            ref = m == "lora" and aspect != "training speed"
            out.append(dict(aspect=aspect, method=m, seed=STARS[aspect][m], measured=measured,
                            agrees="reference" if ref else ("yes" if ok else "no")))
    return out


def gpu_need_cells(need_gb: dict[str, float]) -> list[dict]:
    """The C15 "GPU need" row against a planner estimate {method: GB a card must have}: agrees when the
    need is within the seed's class (2/3 to 1× of its "X GB+")."""
    out = []
    for m in ("lora", "qlora", "dora"):
        seed_gb = float(STARS["GPU need"][m].split()[0])
        ratio = need_gb[m] / seed_gb
        out.append(dict(aspect="GPU need", method=m, seed=STARS["GPU need"][m],
                        measured=f"{need_gb[m]:.1f} GB (planner, 7B)",
                        agrees="yes" if 2 / 3 <= ratio <= 1 else f"no ({ratio:.2f}× the seed's)"))
    return out


def showdown_numbers(rows: list[dict], need_gb: dict[str, float] | None = None) -> dict[str, dict]:
    """{claim: numbers} for C5, C12, C14, C15, C18 from showdown.summary rows at one rank (those whose
    methods were measured; an unfinished measurement gives fewer claims, never a guess)."""
    by = {x["method"]: x for x in rows}
    out: dict[str, dict] = {}
    if "lora" in by:
        lo = by["lora"]
        out["C5"] = {"share_small_all_linear": 100 * lo["trainable"] / lo["total"]}
    if not {"lora", "qlora", "dora"} <= set(by):
        return out
    lo, ql, do = by["lora"], by["qlora"], by["dora"]
    out["C12"] = {"training_small": _mem(ql) / _mem(lo)}
    out["C14"] = dict(dora_em=do["exact_match"], dora_std=do["exact_match_std"], lora_em=lo["exact_match"],
                      lora_std=lo["exact_match_std"], extra_params=do["trainable"] - lo["trainable"],
                      step_ratio=do["median_step_s"] / lo["median_step_s"])
    out["C18"] = dict(qlora_em=ql["exact_match"], qlora_std=ql["exact_match_std"], lora_em=lo["exact_match"],
                      lora_std=lo["exact_match_std"], mem_ratio=_mem(ql) / _mem(lo),
                      step_ratio=ql["median_step_s"] / lo["median_step_s"])
    cells = [c for c in star_cells(rows) if c["agrees"] != "reference"]
    cells += gpu_need_cells(need_gb) if need_gb else []
    bad = [f"{c['method']} {c['aspect']}" for c in cells if c["agrees"] != "yes"]
    out["C15"] = dict(cells_agree=len(cells) - len(bad), cells_total=len(cells), disagree=bad)
    return out
