"""Regenerate the README's claims-ledger table from results/claims/*.json (the cpu profile's results).

    python scripts/render_ledger.py            rewrite the table between the ledger markers of README.md
    python scripts/render_ledger.py --check    exit 1 when README.md and the results files disagree
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftlab import ledger  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when they disagree")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--results", default=str(ledger.RESULTS), help="folder of <claim>.json files")
    a = ap.parse_args(argv)
    same = ledger.sync_readme(a.readme, a.results, check=a.check)
    if a.check and not same:
        print(f"{a.readme}: the ledger table differs from {a.results}; run python scripts/render_ledger.py")
        return 1
    print(f"{a.readme}: ledger table {'up to date' if same else 'rewritten'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
