"""The Korean edition: notebooks/ko/*.ipynb generated from the English notebooks and gettext catalogs.

    python scripts/translate.py update   # refresh notebooks/i18n/ko/*.po from the English markdown
    python scripts/translate.py build    # write notebooks/ko/*.ipynb (refuses while a catalog is incomplete)
    python scripts/translate.py check    # exit 1, naming every stale/untranslated cell or out-of-date file

The English notebooks are the source. Each markdown cell is one catalog entry: msgctxt = the cell id,
msgid = the English text, msgstr = the Korean. When an English cell changes, `update` keeps the old
Korean but marks the entry fuzzy (with the previous English as `#| msgid`), and `build`/`check` refuse
it until a translator updates the text and removes the fuzzy flag. Code cells are copied unchanged,
so the Korean notebooks run exactly the code the English ones run (tests/test_korean.py checks it).
Catalogs are read and written with Babel (`babel.messages`), the gettext library JupyterLab ships with.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import io
import sys
from pathlib import Path

import nbformat
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks"
CATALOGS = SOURCE / "i18n" / "ko"
TARGET = SOURCE / "ko"
LOCALE = "ko"
FIXED_DATE = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)  # constant: no churn in git


def notebooks() -> list[Path]:
    """The English source notebooks, in order."""
    return sorted(SOURCE.glob("[0-9][0-9]_*.ipynb"))


def catalog_path(nb_path: Path) -> Path:
    return CATALOGS / f"{nb_path.stem}.po"


def read_catalog(path: Path) -> Catalog | None:
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return read_po(f, locale=LOCALE)


def _markdown(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "markdown"]


def updated_catalog(nb_path: Path) -> Catalog:
    """The catalog for one notebook: one entry per markdown cell, old translations kept.

    An entry whose English text changed keeps its Korean as a fuzzy suggestion; entries for cells
    that no longer exist are dropped (git history keeps them)."""
    nb = nbformat.read(nb_path, as_version=4)
    old = read_catalog(catalog_path(nb_path))
    by_id = {m.context: m for m in old if m.id and m.context} if old is not None else {}
    cat = Catalog(locale=LOCALE, domain=nb_path.stem, project="PEFT Lab", fuzzy=False,
                  header_comment=f"# Korean translation of notebooks/{nb_path.name} (one entry per markdown cell).\n"
                                 "# Edit msgstr; regenerate with `python scripts/translate.py build`.\n#",
                  creation_date=FIXED_DATE, revision_date=FIXED_DATE,
                  language_team="PEFT Lab <ko>", last_translator="PEFT Lab")
    for cell in _markdown(nb):
        prev = by_id.get(cell.id)
        string, flags, previous = "", (), ()
        if prev is not None and prev.string:
            string = prev.string
            if prev.id != cell.source:                       # English changed: suggestion only
                flags, previous = ("fuzzy",), prev.id if "fuzzy" not in prev.flags else prev.previous_id
            elif "fuzzy" in prev.flags:
                flags, previous = ("fuzzy",), prev.previous_id
        cat.add(cell.source, string, context=cell.id, flags=flags, previous_id=previous)
    return cat


def write_catalog(cat: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    write_po(buf, cat, width=0, include_previous=True, include_lineno=False)
    path.write_bytes(buf.getvalue())


def problems(nb_path: Path) -> list[str]:
    """Why this notebook's catalog cannot build: missing entries, untranslated, fuzzy (stale)."""
    nb = nbformat.read(nb_path, as_version=4)
    cat = read_catalog(catalog_path(nb_path))
    rel = catalog_path(nb_path).relative_to(ROOT)
    if cat is None:
        return [f"{rel}: no catalog (run `python scripts/translate.py update`)"]
    out = []
    for cell in _markdown(nb):
        msg = cat.get(cell.source, context=cell.id)
        if msg is None:
            other = next((m for m in cat if m.context == cell.id), None)
            why = "its English text changed" if other is not None else "it has no entry"
            out.append(f"{rel}: cell {cell.id} is stale: {why} (run `update`, then translate it)")
        elif not msg.string:
            out.append(f"{rel}: cell {cell.id} is untranslated")
        elif "fuzzy" in msg.flags:
            out.append(f"{rel}: cell {cell.id} is fuzzy: its English text changed; update the Korean, drop the flag")
    return out


def korean_notebook(nb_path: Path) -> str:
    """The Korean notebook as the text `build` writes: English code, catalog markdown."""
    bad = problems(nb_path)
    if bad:
        raise ValueError("; ".join(bad))
    nb = nbformat.read(nb_path, as_version=4)
    cat = read_catalog(catalog_path(nb_path))
    ko = copy.deepcopy(nb)
    for cell in _markdown(ko):
        cell.source = cat.get(cell.source, context=cell.id).string
    ko.metadata["language_info"] = dict(ko.metadata.get("language_info", {}), name="python")
    ko.metadata["peftlab"] = {"language": "ko", "source": f"notebooks/{nb_path.name}"}
    return nbformat.writes(ko) + "\n"


def update() -> None:
    for nb_path in notebooks():
        write_catalog(updated_catalog(nb_path), catalog_path(nb_path))
        print("updated", catalog_path(nb_path).relative_to(ROOT))


def build() -> int:
    bad = [p for nb_path in notebooks() for p in problems(nb_path)]
    if bad:
        print("\n".join(bad), file=sys.stderr)
        print("fix the catalogs above, then build again", file=sys.stderr)
        return 1
    TARGET.mkdir(exist_ok=True)
    for nb_path in notebooks():
        (TARGET / nb_path.name).write_text(korean_notebook(nb_path), encoding="utf-8")
        print("wrote", (TARGET / nb_path.name).relative_to(ROOT))
    return 0


def check() -> int:
    bad = []
    for nb_path in notebooks():
        found = problems(nb_path)
        bad += found
        out = TARGET / nb_path.name
        if not found and (not out.is_file() or out.read_text(encoding="utf-8") != korean_notebook(nb_path)):
            bad.append(f"{out.relative_to(ROOT)} is not what the catalog builds (run `python scripts/translate.py build`)")
    print("\n".join(bad) if bad else "Korean edition up to date", file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("update", "build", "check"))
    cmd = ap.parse_args(argv).command
    if cmd == "update":
        update()
        return 0
    return build() if cmd == "build" else check()


if __name__ == "__main__":
    sys.exit(main())
