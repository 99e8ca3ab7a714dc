"""What every checker shares: the verdict that names a mistake, the solutions switch, the report.

    check(fn) -> bool     prints "✓ correct: …" or "✗ <what is wrong and how to fix it>", never raises

`verdict` compares a tensor with the reference and, when it differs, names the typical mistake it
matches (the wrong axis, a missing scaling factor, a transposed shape, …) rather than only "values
differ". `cases` does the same for answers that are numbers or strings over a set of inputs.
`exercise` wraps a checker: a stub that still raises NotImplementedError gets "not solved yet"
instead of a traceback, and with PEFTLAB_SOLUTIONS=1 (the test suite's notebook runs) the checker
checks the solution in notebooks/solutions/<notebook>.py instead of the learner's function, and says so.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

ATOL = RTOL = 1e-5  # fp32 answers computed in a different order still agree to this
SOLUTIONS_ENV = "PEFTLAB_SOLUTIONS"  # "1": check the solutions in notebooks/solutions/, not the cells


# --- comparing answers ---------------------------------------------------------------------------

def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol))


def verdict(got, ref: torch.Tensor, mistakes: Mapping[str, torch.Tensor] | None = None,
            layout: str = "") -> str | None:
    """None when `got` matches `ref`; otherwise the most specific reason it does not.

    `mistakes` maps a hint to what that mistake returns on the same inputs. It may have another
    shape than `ref` (a norm over the wrong axis, BA transposed): it is matched by value first,
    so its hint beats the generic ones. Then, generically: a transposed result, a wrong shape,
    a flipped sign, a result off by a constant factor (a scaling factor missing or doubled).
    `layout` names ref's axes for the messages, e.g. "(batch, out)".
    """
    want, have = tuple(ref.shape), tuple(getattr(got, "shape", ()))
    expected = f"{want} = {layout}" if layout else f"{want}"
    if not isinstance(got, torch.Tensor):
        return f"return a torch.Tensor of shape {expected}, got {type(got).__name__}"
    if close(got, ref):
        return None
    for hint, wrong in (mistakes or {}).items():
        if close(got, wrong):
            return hint
    if have != want:
        if got.ndim == 2 and have == want[::-1]:
            return (f"the result is transposed: expected shape {expected}, got {have}; "
                    "swap the operands of the matmul or drop a .T")
        return f"expected shape {expected}, got {have}"
    g, r = got.detach().double().flatten(), ref.double().flatten()
    c = float(g @ r / (r @ r)) if float(r @ r) > 0 else 0.0
    if abs(c - 1) > 1e-3 and torch.allclose(g, c * r, atol=ATOL, rtol=RTOL):
        if abs(c + 1) < 1e-4:
            return "the sign is flipped: the result is −(expected)"
        return (f"off by a constant factor: your result is {c:.4g} × the expected one; a scaling "
                "factor is missing, doubled or applied to the wrong term")
    return f"values differ from the reference (max |diff| {float((g - r).abs().max()):.3g})"


def same(a, b, rtol: float) -> bool:
    """Numbers equal to `rtol` (relative), anything else equal as is (strings, tuples, None)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)
    return a == b


def cases(got: Sequence, ref: Sequence, labels: Sequence[str],
          mistakes: Mapping[str, Sequence] | None = None, rtol: float = 1e-9) -> str | None:
    """None when every answer in `got` equals `ref` (one per input, named by `labels`).

    Otherwise the hint of the mistake whose answers `got` reproduces on every input, or the first
    input that differs with the expected answer.
    """
    if all(same(g, r, rtol) for g, r in zip(got, ref)):
        return None
    for hint, wrong in (mistakes or {}).items():
        if all(same(g, w, rtol) for g, w in zip(got, wrong)):
            return hint
    i = next(i for i, (g, r) in enumerate(zip(got, ref)) if not same(g, r, rtol))
    return f"{labels[i]}: expected {ref[i]!r}, got {got[i]!r}"


# --- running the learner's code ------------------------------------------------------------------

def call(fn: Callable, args: tuple, on_error: str) -> tuple[object, str | None]:
    """(fn(*args), None), or (None, a message) when the learner's code raises.

    NotImplementedError passes through: `exercise` turns it into "not solved yet".
    """
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except Exception as err:  # the learner's code may raise anything
        return None, f"raised {type(err).__name__}: {err} — {on_error}"


def report(why: str | None, correct: str) -> bool:
    print(f"✗ {why}" if why else f"✓ correct: {correct}")
    return why is None


# --- the solutions switch ------------------------------------------------------------------------

def solutions_on() -> bool:
    return os.environ.get(SOLUTIONS_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def solutions_dir() -> Path | None:
    """notebooks/solutions/ seen from a notebook's folder, the repository root, or this package."""
    here = Path(__file__).resolve().parents[2]  # the repository root of a clone (editable install)
    for d in (Path.cwd() / "solutions", Path.cwd() / "notebooks" / "solutions", here / "notebooks" / "solutions"):
        if d.is_dir():
            return d
    return None


def load_solution(notebook: str, name: str) -> tuple[Callable | None, str | None]:
    """(the function `name` of notebooks/solutions/<notebook>.py, None) or (None, why not)."""
    folder = solutions_dir()
    path = folder / f"{notebook}.py" if folder else None
    if path is None or not path.is_file():
        return None, (f"notebooks/solutions/{notebook}.py was not found (looked in the notebook's "
                      "folder and the repository): run from a clone of the repository")
    spec = importlib.util.spec_from_file_location(f"peftlab_solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a broken solutions file must not break the lesson
        return None, f"{path.name} failed to load: {type(err).__name__}: {err}"
    fn = getattr(module, name, None)
    return (fn, None) if callable(fn) else (None, f"{path.name} has no function {name}")


def exercise(notebook: str, solution: str) -> Callable:
    """Decorate a checker of notebook `notebook` ("01_low_rank_lora") whose stub is called `solution`.

    The wrapped checker never raises: a stub that raises NotImplementedError gets "not solved yet"
    with where the solution is; a bug anywhere else is printed as a failed check.
    """
    where = f"notebooks/solutions/{notebook}.py"

    def wrap(check: Callable[[Callable], bool]) -> Callable[[Callable], bool]:
        @functools.wraps(check)
        def run(fn: Callable) -> bool:
            if solutions_on():
                fn, why = load_solution(notebook, solution)
                if why:
                    return report(f"{SOLUTIONS_ENV}=1 but {why}", "")
                print(f"({SOLUTIONS_ENV}=1: checking the solution `{solution}` in {where}, not this cell's code)")
            if not callable(fn):
                return report(f"pass your function itself, e.g. check({solution}), not {type(fn).__name__}", "")
            try:
                return check(fn)
            except NotImplementedError:
                name = getattr(fn, "__name__", solution)
                print(f"✗ not solved yet: `{name}` still raises NotImplementedError — write its body (the "
                      f"hint is in its docstring) and run the cell again. A solution: {where}")
                return False
            except Exception as err:  # a checker never breaks the lesson
                return report(f"the check could not run ({type(err).__name__}: {err}); look at what your "
                              f"function returns — a solution is in {where}", "")
        run.notebook, run.solution = notebook, solution
        return run
    return wrap
