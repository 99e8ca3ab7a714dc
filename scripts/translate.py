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
from babel.messages.pofile import denormalize, normalize, read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks"
CATALOGS = SOURCE / "i18n" / "ko"
TARGET = SOURCE / "ko"
LOCALE = "ko"
FIXED_DATE = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)  # constant: no churn in git


# Every function takes the folders it works on (source notebooks, catalogs, generated notebooks) as
# keyword arguments defaulting to the repository's, so tests/test_korean.py can run the whole cycle
# (edit English -> stale -> update -> fuzzy -> translate -> clean) on a temporary copy.

def notebooks(source: Path = SOURCE) -> list[Path]:
    """The English source notebooks, in order."""
    return sorted(source.glob("[0-9][0-9]_*.ipynb"))


def catalog_path(nb_path: Path, catalogs: Path = CATALOGS) -> Path:
    return catalogs / f"{nb_path.stem}.po"


def _shown(path: Path) -> Path:
    """A path as messages show it: relative to the repository when inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


# The previous English of a fuzzy entry is stored as gettext's `#| msgid` lines. Babel 2.x writes
# them as one re-wrapped paragraph (a multi-line msgid comes out mangled) and reads them back as
# plain translator comments, so this module writes and reads those lines itself.
PREVIOUS = "| "


def read_catalog(path: Path) -> Catalog | None:
    if not path.is_file():
        return None
    with path.open("rb") as f:
        cat = read_po(f, locale=LOCALE)
    for m in cat:
        lines = [c[len(PREVIOUS):] for c in m.user_comments if c.startswith(PREVIOUS)]
        if lines and lines[0].startswith("msgid "):
            m.previous_id = [denormalize("\n".join([lines[0][len("msgid "):], *lines[1:]]))]
        m.user_comments = [c for c in m.user_comments if not c.startswith(PREVIOUS)]
    return cat


def _markdown(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "markdown"]


def updated_catalog(nb_path: Path, catalogs: Path = CATALOGS) -> Catalog:
    """The catalog for one notebook: one entry per markdown cell, old translations kept.

    An entry whose English text changed keeps its Korean as a fuzzy suggestion; entries for cells
    that no longer exist are dropped (git history keeps them). Translator comments (`# ...`) are kept."""
    nb = nbformat.read(nb_path, as_version=4)
    old = read_catalog(catalog_path(nb_path, catalogs))
    by_id = {m.context: m for m in old if m.id and m.context} if old is not None else {}
    cat = Catalog(locale=LOCALE, domain=nb_path.stem, project="PEFT Lab", fuzzy=False,
                  header_comment=f"# Korean translation of notebooks/{nb_path.name} (one entry per markdown cell).\n"
                                 "# Edit msgstr; regenerate with `python scripts/translate.py build`.\n#",
                  creation_date=FIXED_DATE, revision_date=FIXED_DATE,
                  language_team="PEFT Lab <ko>", last_translator="PEFT Lab")
    for cell in _markdown(nb):
        prev = by_id.get(cell.id)
        string, flags, previous = "", (), ()
        comments = prev.user_comments if prev is not None else ()
        if prev is not None and prev.string:
            string = prev.string
            if prev.id != cell.source:                       # English changed: suggestion only
                flags, previous = ("fuzzy",), prev.id if "fuzzy" not in prev.flags else prev.previous_id
            elif "fuzzy" in prev.flags:
                flags, previous = ("fuzzy",), prev.previous_id
        cat.add(cell.source, string, context=cell.id, flags=flags, previous_id=previous, user_comments=comments)
    return cat


def write_catalog(cat: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    write_po(buf, cat, width=0, include_previous=False, include_lineno=False)
    text = buf.getvalue().decode(cat.charset)
    for m in cat:
        if m.id and m.context and m.previous_id and "fuzzy" in m.flags:
            first, *rest = normalize(m.previous_id[0], width=0).splitlines()
            previous = "".join([f"#{PREVIOUS}msgid {first}\n", *(f"#{PREVIOUS}{line}\n" for line in rest)])
            anchor = f"\nmsgctxt {normalize(m.context, width=0)}\n"
            text = text.replace(anchor, "\n" + previous + anchor[1:], 1)
    path.write_bytes(text.encode(cat.charset))


def problems(nb_path: Path, catalogs: Path = CATALOGS) -> list[str]:
    """Why this notebook's catalog cannot build: missing entries, untranslated, fuzzy (stale), and
    entries for cells the English notebook no longer has. Each message starts with the catalog's
    path (named after the notebook) and names the cell id."""
    nb = nbformat.read(nb_path, as_version=4)
    cat = read_catalog(catalog_path(nb_path, catalogs))
    rel = _shown(catalog_path(nb_path, catalogs))
    if cat is None:
        return [f"{rel}: no catalog (run `python scripts/translate.py update`)"]
    out = []
    ids = {cell.id for cell in _markdown(nb)}
    for m in cat:
        if m.id and m.context not in ids:
            out.append(f"{rel}: entry {m.context} has no markdown cell in notebooks/{nb_path.name} "
                       "(run `update`: it drops the entry)")
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


def korean_notebook(nb_path: Path, catalogs: Path = CATALOGS) -> str:
    """The Korean notebook as the text `build` writes: English code, catalog markdown."""
    bad = problems(nb_path, catalogs)
    if bad:
        raise ValueError("; ".join(bad))
    nb = nbformat.read(nb_path, as_version=4)
    cat = read_catalog(catalog_path(nb_path, catalogs))
    ko = copy.deepcopy(nb)
    for cell in _markdown(ko):
        cell.source = cat.get(cell.source, context=cell.id).string
    ko.metadata["language_info"] = dict(ko.metadata.get("language_info", {}), name="python")
    ko.metadata["peftlab"] = {"language": "ko", "source": f"notebooks/{nb_path.name}"}
    return nbformat.writes(ko) + "\n"


def update(source: Path = SOURCE, catalogs: Path = CATALOGS) -> None:
    for nb_path in notebooks(source):
        write_catalog(updated_catalog(nb_path, catalogs), catalog_path(nb_path, catalogs))
        print("updated", _shown(catalog_path(nb_path, catalogs)))


def build(source: Path = SOURCE, catalogs: Path = CATALOGS, target: Path = TARGET) -> int:
    bad = [p for nb_path in notebooks(source) for p in problems(nb_path, catalogs)]
    if bad:
        print("\n".join(bad), file=sys.stderr)
        print("fix the catalogs above, then build again", file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    for nb_path in notebooks(source):
        (target / nb_path.name).write_text(korean_notebook(nb_path, catalogs), encoding="utf-8")
        print("wrote", _shown(target / nb_path.name))
    return 0


def check(source: Path = SOURCE, catalogs: Path = CATALOGS, target: Path = TARGET) -> int:
    bad = []
    english = notebooks(source)
    for nb_path in english:
        found = problems(nb_path, catalogs)
        bad += found
        out = target / nb_path.name
        if not found and (not out.is_file() or out.read_text(encoding="utf-8") != korean_notebook(nb_path, catalogs)):
            bad.append(f"{_shown(out)} is not what the catalog builds (run `python scripts/translate.py build`)")
    names = {nb_path.name for nb_path in english}
    for out in sorted(target.glob("*.ipynb")):
        if out.name not in names:
            bad.append(f"{_shown(out)} has no English notebook in {_shown(source)} (delete it)")
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
