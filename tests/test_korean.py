"""The Korean edition (notebooks/ko/, issue 18) is complete, current, and runs the English code.

scripts/translate.py generates notebooks/ko/NN_*.ipynb from the English notebooks and the catalogs
notebooks/i18n/ko/NN_*.po (one entry per markdown cell, keyed by cell id). These tests check, without
a kernel:
- every catalog is complete (no untranslated, fuzzy or missing entry), and the mechanism that marks
  a Korean cell stale when its English cell changes works (proven on a temporary copy);
- the committed Korean notebooks are exactly what the catalogs build now, one per English notebook;
- independently of the script: same cells, ids, types and order, and code cells byte-identical, so
  nbval runs only two Korean notebooks (see the repository's conftest.py);
- docs/glossary.md's terms are used, relative links resolve from notebooks/ko/, and the Colab badge
  opens the Korean notebook.
"""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KO_DIR = ROOT / "notebooks" / "ko"
REBUILD = "run `python scripts/translate.py build` and commit notebooks/ko/"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


T = _script("translate")
ids = dict(ids=lambda p: p.name)


def _korean(nb_path: Path) -> Path:
    ko = KO_DIR / nb_path.name
    if not ko.is_file():
        pytest.fail(f"notebooks/{nb_path.name} has no Korean edition notebooks/ko/{nb_path.name}: {REBUILD}")
    return ko


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]  # raw JSON: nothing normalised


def _text(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


# --- catalogs: complete, and stale entries are caught ---------------------------------------------

@pytest.mark.parametrize("nb_path", NOTEBOOKS, **ids)
def test_catalog_complete(nb_path):
    """0 untranslated, 0 fuzzy, no missing or orphaned entry (each message names the .po and the cell)."""
    bad = T.problems(nb_path)
    assert not bad, "\n".join(bad) + "\ntranslate the cells above (see docs/glossary.md), then " + REBUILD


def _fake_korean(cell_id: str) -> str:
    return f"# 가짜 번역 {cell_id}\n\n테스트용 한국어 문장입니다."


def test_stale_english_cell_is_caught_and_updated(tmp_path):
    """Edit one English markdown cell in a tmp copy: `problems` names exactly that cell, `update` keeps
    the old Korean as a fuzzy suggestion, and a new translation without the flag is clean again."""
    src, cats, out = tmp_path / "notebooks", tmp_path / "i18n", tmp_path / "ko"
    src.mkdir()
    cats.mkdir()
    nb_path = Path(shutil.copy(ROOT / "notebooks" / "03_dora.ipynb", src))
    shutil.copy(T.catalog_path(ROOT / "notebooks" / "03_dora.ipynb"), cats)
    # a fully "translated" catalog, made up here so this works before the real translations land
    cat = T.read_catalog(T.catalog_path(nb_path, cats))
    for m in cat:
        if m.id:
            m.string, m.flags = _fake_korean(m.context), set()
    T.write_catalog(cat, T.catalog_path(nb_path, cats))
    assert T.problems(nb_path, cats) == []
    assert T.build(src, cats, out) == 0 and T.check(src, cats, out) == 0

    nb = nbformat.read(nb_path, as_version=4)
    cell = [c for c in nb.cells if c.cell_type == "markdown"][2]
    old_english, old_korean = cell.source, _fake_korean(cell.id)
    cell.source += "\n\nOne more English sentence."
    nbformat.write(nb, nb_path)

    bad = T.problems(nb_path, cats)
    assert len(bad) == 1 and f"cell {cell.id} is stale" in bad[0] and "03_dora" in bad[0], bad
    assert T.check(src, cats, out) == 1  # the stale cell, even though notebooks/ko still exists

    cat = T.read_catalog(T.catalog_path(nb_path, cats))
    cat.get(old_english, context=cell.id).user_comments = ["translator's note: keep me"]
    T.write_catalog(cat, T.catalog_path(nb_path, cats))
    for _ in range(2):  # a second update (the entry still fuzzy) keeps the previous English and the note
        T.update(src, cats)
        entry = T.read_catalog(T.catalog_path(nb_path, cats)).get(cell.source, context=cell.id)
        assert entry is not None and "fuzzy" in entry.flags
        assert entry.string == old_korean and entry.previous_id == [old_english]  # multi-line, with \ and $
        assert entry.user_comments == ["translator's note: keep me"]
    po = T.catalog_path(nb_path, cats).read_text(encoding="utf-8")
    assert po.count("#| msgid ") == 1 and po.count("keep me") == 1  # the translator sees the old English once
    bad = T.problems(nb_path, cats)
    assert len(bad) == 1 and f"cell {cell.id} is fuzzy" in bad[0], bad
    with pytest.raises(ValueError, match=cell.id):
        T.korean_notebook(nb_path, cats)
    assert T.build(src, cats, out) == 1

    cat = T.read_catalog(T.catalog_path(nb_path, cats))
    entry = cat.get(cell.source, context=cell.id)
    entry.string = old_korean + "\n\n영어 문장 하나를 더 번역했습니다."
    entry.flags.discard("fuzzy")
    T.write_catalog(cat, T.catalog_path(nb_path, cats))
    assert T.problems(nb_path, cats) == []
    T.update(src, cats)  # a second update keeps the clean entry clean
    assert T.problems(nb_path, cats) == []
    assert "영어 문장 하나를 더 번역했습니다." in T.korean_notebook(nb_path, cats)
    assert T.check(src, cats, out) == 1  # notebooks/ko is now behind the catalog ...
    assert T.build(src, cats, out) == 0 and T.check(src, cats, out) == 0  # ... until rebuilt


def test_added_and_removed_cells_are_caught(tmp_path):
    src, cats = tmp_path / "notebooks", tmp_path / "i18n"
    src.mkdir()
    nb_path = Path(shutil.copy(ROOT / "notebooks" / "00_start_here.ipynb", src))
    T.update(src, cats)
    nb = nbformat.read(nb_path, as_version=4)
    gone = [c for c in nb.cells if c.cell_type == "markdown"][1]
    nb.cells.remove(gone)
    new = nbformat.v4.new_markdown_cell("A new English cell.")
    nb.cells.append(new)
    nbformat.write(nb, nb_path)
    bad = "\n".join(T.problems(nb_path, cats))
    assert f"entry {gone.id} has no markdown cell" in bad and f"cell {new.id} is stale: it has no entry" in bad
    T.update(src, cats)
    bad = "\n".join(T.problems(nb_path, cats))
    assert gone.id not in bad and f"cell {new.id} is untranslated" in bad


# --- generated notebooks: current, and the same notebook but for the prose -------------------------

def test_every_korean_notebook_has_an_english_one():
    english = {p.name for p in NOTEBOOKS}
    extra = sorted(p.name for p in KO_DIR.glob("*.ipynb") if p.name not in english)
    assert not extra, f"notebooks/ko/ has notebooks with no English source: {extra}; delete them"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, **ids)
def test_generated_notebook_is_current(nb_path):
    ko = _korean(nb_path)
    try:
        want = T.korean_notebook(nb_path)
    except ValueError as err:
        pytest.fail(f"the catalog cannot build: {err}")
    assert ko.read_text(encoding="utf-8") == want, f"notebooks/ko/{nb_path.name} is out of date: {REBUILD}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, **ids)
def test_same_cells_and_identical_code(nb_path):
    """Checked on the files themselves, not through the script: the Korean notebook runs the English code."""
    en, ko = _cells(nb_path), _cells(_korean(nb_path))
    shape = lambda cells: [(c.get("id"), c["cell_type"]) for c in cells]  # noqa: E731
    assert shape(ko) == shape(en), f"notebooks/ko/{nb_path.name}: cells differ from the English ones: {REBUILD}"
    for e, k in zip(en, ko):
        if e["cell_type"] == "code":
            where = f"notebooks/ko/{nb_path.name} code cell {e.get('id')}"
            assert _text(k) == _text(e), f"{where}: source differs from the English: {REBUILD}"
            assert k.get("metadata", {}) == e.get("metadata", {}), f"{where}: tags/metadata differ: {REBUILD}"
            assert not k.get("outputs") and k.get("execution_count") is None, f"{where}: outputs stored: {REBUILD}"
    en_meta = json.loads(nb_path.read_text(encoding="utf-8"))["metadata"]
    ko_meta = json.loads(_korean(nb_path).read_text(encoding="utf-8"))["metadata"]
    assert ko_meta.get("kernelspec") == en_meta.get("kernelspec")


# --- glossary ------------------------------------------------------------------------------------

def glossary() -> dict[str, str]:
    """English -> Korean, from the table in docs/glossary.md."""
    terms = {}
    for line in (ROOT / "docs" / "glossary.md").read_text(encoding="utf-8").splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cols) < 2 or set(cols[0]) <= set("-: "):
            continue
        if cols[0].lower() == "english":
            continue
        terms[cols[0]] = cols[1]
    return terms


def prose(markdown: str) -> str:
    """The English a reader reads: no fenced blocks, code spans, link targets or URLs; one space per run."""
    text = re.sub(r"(?ms)^\s*(```|~~~).*?^\s*\1", " ", markdown)
    text = re.sub(r"(`+)(.+?)\1", " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"(https?|ftp)://\S+|www\.\S+", " ", text)
    return re.sub(r"\s+", " ", text)


def uses(term: str, english_prose: str) -> bool:
    """Case-insensitive, from a word start: "merge" matches "merged", not "unmerge"."""
    pattern = r"(?<![A-Za-z0-9])" + r"\s+".join(map(re.escape, term.split()))
    return re.search(pattern, english_prose, re.I) is not None


def test_glossary_parses_and_matches_as_documented():
    terms = glossary()
    assert len(terms) >= 30 and terms["merge"] == "병합" and terms["fine-tuning"] == "파인튜닝"
    assert "English" not in terms and not any(set(k) <= set("-: ") for k in terms)
    text = prose("We `merge` it: [see merge docs](https://x.org/merge) and https://merge.example,\n"
                 "```python\nmerge()\n```\nthen the merged\nweights; unmerge; full\n fine-tuning.")
    assert uses("merge", text) and uses("weight", text) and uses("full fine-tuning", text)
    assert not uses("merge", prose("only `merge` and [a](../merge.md) and unmerge"))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, **ids)
def test_glossary_terms_used(nb_path):
    cat = T.read_catalog(T.catalog_path(nb_path))
    assert cat is not None, f"no catalog for {nb_path.name}: run `python scripts/translate.py update`"
    bad = []
    for m in cat:
        if not m.id or not m.string:
            continue  # untranslated: test_catalog_complete reports it
        korean = re.sub(r"\s+", " ", m.string)
        english = prose(m.id)
        for en, ko in glossary().items():
            if uses(en, english) and ko not in korean:
                bad.append(f"{nb_path.stem} cell {m.context}: English uses {en!r}, Korean lacks {ko!r}")
    assert not bad, "\n".join(bad) + "\n(docs/glossary.md is binding; a Korean term may be followed by the English in parentheses)"


# --- links and the Colab badge -------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<(?:a|img)\s[^>]*(?:href|src)=\"([^\"]+)\"")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, **ids)
def test_relative_links_resolve(nb_path):
    bad = []
    for cell in _cells(_korean(nb_path)):
        if cell["cell_type"] != "markdown":
            continue
        for match in LINK.finditer(prose_links(_text(cell))):
            target = match.group(1) or match.group(2)
            if re.match(r"^([a-z][a-z0-9+.-]*:|#|//)", target, re.I):
                continue  # a URL, mailto:, or an anchor in this notebook
            path = target.split("#")[0].split("?")[0]
            if path and not (KO_DIR / path).exists():
                bad.append(f"notebooks/ko/{nb_path.name} cell {cell.get('id')}: {target} does not exist "
                           f"(links from notebooks/ko/ need one more ../ than the English; README -> README.ko.md)")
    assert not bad, "\n".join(bad)


def prose_links(markdown: str) -> str:
    """Markdown without fenced blocks and code spans (a link inside code is not a link)."""
    text = re.sub(r"(?ms)^\s*(```|~~~).*?^\s*\1", " ", markdown)
    return re.sub(r"(`+)(.+?)\1", " ", text, flags=re.S)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, **ids)
def test_colab_badge_opens_the_korean_notebook(nb_path):
    colab = _script("colab")
    cells = _cells(_korean(nb_path))
    first = _text(cells[0]).splitlines()[0] if cells and _text(cells[0]) else ""
    want = colab.badge(colab.repo_url(), f"ko/{nb_path.name}")
    assert first == want, (f"notebooks/ko/{nb_path.name}: the intro's first line must be the Korean Colab "
                           f"badge\n  {want}\n(translate it as .../blob/main/notebooks/ko/{nb_path.name})")
