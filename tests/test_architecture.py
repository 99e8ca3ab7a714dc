"""The package's shape: imports run one way, every module imports on its own, modules stay small.

Compared: the import graph of peftlab, read with `ast` from the source (every module and
subpackage; imports inside functions count too: a lazy import hides a circle, it does not remove
it; `if TYPE_CHECKING:` blocks do not), against the LAYERS table below — no cycle, no import from
a higher layer into a lower one. Then each module imported first, as in a fresh interpreter;
`import peftlab.vram` without ipywidgets; each file's line count against MAX_LINES; no file citing
anything outside the repository (a learner's clone has only the repository; docs/ holds the facts).
The walker itself is checked on a small made-up package with a cycle and an upward import.
"""
import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "peftlab"

# Lower layers never import higher ones; a layer may import itself (cycles are still caught).
LAYERS = {
    "foundations": ["settings", "memory", "viz"],
    "from-scratch lessons": ["lowrank", "lora", "nf4", "dora"],
    "the real stack": ["cache", "models", "records", "data", "evaluate", "recipe", "train", "adapters", "vram",
                       "vram.checks", "vram.spec", "vram.terms", "vram.mixed", "vram.sharding", "vram.measure",
                       "runconfig", "fsdp", "showdown", "claims", "ledger"],
    "apps": ["widgets", "rank_explorer", "block_explorer", "vram.planner", "vram.cli", "cli",
             "doctor", "exercises", "exercises._verdict", "exercises.lora", "exercises.nf4", "exercises.dora",
             "exercises.qlora", "exercises.vram", "exercises.showdown"],
}
# Planned modules that may not exist yet. Emptied when they land, so the test ends strict.
PLANNED: set = set()
# Imports tolerated for now (none: the vram package removed the circles), and modules that cannot
# be imported first. Both must stay empty.
TOLERATED: set = set()
BROKEN_ALONE: dict = {}

# Files that still cite notes outside the repository. Must stay empty.
CITES_OUTSIDE_FOR_NOW: set = set()

MAX_LINES = 350
TOO_LONG_FOR_NOW: dict = {}  # module -> why it may exceed MAX_LINES

LAYER_OF = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}
LAYER_NAMES = list(LAYERS)


# --- the walker ----------------------------------------------------------------------------------

def modules(pkg: pathlib.Path) -> dict[str, pathlib.Path]:
    """{dotted name below the package ("lora", "vram.spec", "vram" for vram/__init__.py): file}."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # the package root is checked on its own (test_package_root_imports_nothing)
            out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
           (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: pathlib.Path, known: set[str], pkg_name: str) -> set[str]:
    """The package's own modules that module `name` imports (absolute or relative imports)."""
    is_init = path.name == "__init__.py"
    here = [pkg_name] + (name.split(".") if name else [])
    package = here if is_init else here[:-1]  # what `from . import x` is relative to
    found: set[str] = set()

    def add(dotted: str) -> None:  # "peftlab.vram.spec" -> "vram.spec"; the root itself is skipped
        parts = dotted.split(".")
        if parts[0] == pkg_name and len(parts) > 1:
            found.add(".".join(parts[1:]))

    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == pkg_name:
                    add(alias.name)
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
            mod = ".".join(base + (node.module.split(".") if node.module else []))
        else:
            mod = node.module or ""
        if mod.split(".")[0] != pkg_name:
            continue
        for alias in node.names:  # `from peftlab import lora`: lora is a module; `from .x import f`: x is
            sub = f"{mod}.{alias.name}"
            add(sub if sub.split(".", 1)[-1] in known else mod)
    found.discard(name)
    return found


def graph(pkg: pathlib.Path) -> dict[str, set[str]]:
    mods = modules(pkg)
    return {n: imports_of(n, p, set(mods), pkg.name) for n, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None (depth-first search, colours)."""
    colour, stack = {}, []

    def visit(n):
        colour[n] = "grey"
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if colour.get(m) == "grey":
                return stack[stack.index(m):] + [m]
            if m not in colour and (found := visit(m)):
                return found
        stack.pop()
        colour[n] = "black"

    for n in sorted(g):
        if n not in colour and (found := visit(n)):
            return found
    return None


def upward(g: dict[str, set[str]], layer_of: dict[str, int]) -> list[str]:
    return [f"{a} ({LAYER_NAMES[layer_of[a]]}) imports {b} ({LAYER_NAMES[layer_of[b]]})"
            for a in sorted(g) for b in sorted(g[a])
            if a in layer_of and b in layer_of and layer_of[b] > layer_of[a]]


# --- the walker on a made-up package --------------------------------------------------------------

def test_walker_finds_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "low.py": "from . import high\n",                 # upward
             "high.py": "def f():\n    from toy.sub import b\n",                   # lazy, still counts
             "sub/__init__.py": "from .a import thing\n",
             "sub/a.py": "from ..sub import b\nthing = 1\n",
             "sub/b.py": "import toy.sub.a\nfrom typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from toy import low\n"}          # ignored
    for name, text in files.items():
        (pkg / name).write_text(text)
    g = graph(pkg)
    assert g == {"low": {"high"}, "high": {"sub.b"}, "sub": {"sub.a"}, "sub.a": {"sub.b"},
                 "sub.b": {"sub.a"}}
    cycle = find_cycle(g)
    assert cycle[0] == cycle[-1] and set(cycle) == {"sub.a", "sub.b"}
    assert upward(g, {"low": 0, "high": 1}) == ["low (foundations) imports high (from-scratch lessons)"]


# --- the real package ----------------------------------------------------------------------------

G = graph(PKG)
TODAY = set(G)


def test_every_module_has_a_layer():
    missing = sorted(TODAY - set(LAYER_OF))
    assert not missing, f"{missing} not in the LAYERS table of tests/test_architecture.py: add it to LAYERS"
    gone = sorted(set(LAYER_OF) - TODAY - PLANNED)
    assert not gone, f"{gone} are in LAYERS but do not exist: remove them (or list them in PLANNED)"
    doubled = [m for m in LAYER_OF if sum(m in mods for mods in LAYERS.values()) > 1]
    assert not doubled, f"{doubled} appear in two layers"


def test_tolerated_imports_still_exist():
    stale = sorted(e for e in TOLERATED if e[0] not in G or e[1] not in G[e[0]])
    assert not stale, f"{stale} no longer exist: remove them from TOLERATED"


def test_no_import_cycle():
    g = {a: {b for b in bs if (a, b) not in TOLERATED} for a, bs in G.items()}
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " → ".join(cycle) + " (move the shared part into a lower module)"


def test_imports_only_go_down():
    g = {a: {b for b in bs if (a, b) not in TOLERATED} for a, bs in G.items()}
    bad = upward(g, LAYER_OF)
    assert not bad, "upward imports (a lower layer must not know a higher one):\n" + "\n".join(bad)


def test_package_root_imports_nothing():
    """`import peftlab.X` runs peftlab/__init__.py first: it must stay free of peftlab imports."""
    own = imports_of("", PKG / "__init__.py", TODAY, PKG.name)
    assert not own, f"peftlab/__init__.py imports {sorted(own)}: keep the package root empty"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_every_module_imports_first():
    """Each module imported with no peftlab module loaded before it (a fresh interpreter as far as
    peftlab is concerned; third-party packages stay loaded to keep this fast)."""
    code = ("import importlib, json, sys, traceback\nfailed = {}\n"
            f"for name in {sorted(TODAY)!r}:\n"
            "    for m in [m for m in sys.modules if m == 'peftlab' or m.startswith('peftlab.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n        importlib.import_module('peftlab.' + name)\n"
            "    except BaseException:\n        failed[name] = traceback.format_exc(limit=-3)\n"
            "print(json.dumps(failed))\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    healed = sorted(set(BROKEN_ALONE) - set(failed))
    assert not healed, f"{healed} import on their own now: remove them from BROKEN_ALONE"
    failed = {n: tb for n, tb in failed.items() if n not in BROKEN_ALONE}
    assert not failed, "modules that fail to import on their own:\n" + "\n".join(
        f"peftlab.{n}:\n{tb}" for n, tb in failed.items())


def test_vram_imports_without_ipywidgets():
    out = _python("import sys, peftlab.vram\nprint('ipywidgets' in sys.modules)")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False", \
        "`import peftlab.vram` imports ipywidgets: keep the widget (the planner) out of the estimator's imports"


@pytest.mark.parametrize("name", sorted(TODAY))
def test_module_size(name):
    path = modules(PKG)[name]
    n = len(path.read_text().splitlines())
    if name in TOO_LONG_FOR_NOW:
        assert n > MAX_LINES, f"{name} has {n} lines now: remove it from TOO_LONG_FOR_NOW"
        pytest.skip(f"{name}: {n} lines, allowed for now: {TOO_LONG_FOR_NOW[name]}")
    assert n <= MAX_LINES, (f"{path.relative_to(ROOT)} has {n} lines (limit {MAX_LINES}): split it "
                            "into rooms named after their concepts")


# --- nothing cites outside the repository -------------------------------------------------------

OUTSIDE = re.compile(r"\.\./shared/|\bFINDINGS\.md|\bCLAIMS\.md")  # the development notes, not shipped
DOCS_LINK = re.compile(r"(?<![\w/.])docs/([\w.-]+\.md)")  # the repository's docs/, not a URL


def _text_files():
    """The repository's own text files: tracked or new-and-not-ignored (so no .venv, egg-info, caches)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    skip = {"results"}
    for rel in sorted(set(filter(None, listed))):
        path = ROOT / rel
        if path.is_file() and not skip & set(pathlib.PurePath(rel).parts) and path.suffix in {
                ".py", ".ipynb", ".md", ".toml", ".yml", ".sh", ".txt", ""}:
            yield rel, path.read_text(errors="replace")


def test_nothing_cites_outside_the_repository():
    citing = {rel for rel, text in _text_files() if OUTSIDE.search(text)}
    healed = sorted(CITES_OUTSIDE_FOR_NOW - citing)
    assert not healed, f"{healed} no longer cite outside the repository: remove them from CITES_OUTSIDE_FOR_NOW"
    bad = sorted(citing - CITES_OUTSIDE_FOR_NOW)
    assert not bad, (f"{bad} cite notes a learner's clone does not have: cite docs/findings.md or "
                     "docs/claims.md (and write the fact there, in the kit's own words)")


def test_cited_docs_exist():
    missing = sorted({(rel, name) for rel, text in _text_files() for name in DOCS_LINK.findall(text)
                      if not (ROOT / "docs" / name).is_file()})
    assert not missing, f"cited but not in docs/: {missing}"
