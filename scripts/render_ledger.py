"""Regenerate the READMEs' claims-ledger tables from results/claims/*.json (the cpu profile's results).

    python scripts/render_ledger.py            rewrite the table between the ledger markers of README.md
                                               and README.ko.md (the Korean one with the seed's original
                                               sentences, read from docs/claims.md)
    python scripts/render_ledger.py --check    exit 1 when a README and the results files disagree
    python scripts/render_ledger.py --readme README.ko.md    only that README (language from its name)
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
    ap.add_argument("--readme", action="append",
                    help="a README to sync (repeatable; default: README.md and README.ko.md)")
    ap.add_argument("--results", default=str(ledger.RESULTS), help="folder of <claim>.json files")
    a = ap.parse_args(argv)
    stale = 0
    for readme in a.readme or [str(p) for p in ledger.READMES]:
        same = ledger.sync_readme(readme, a.results, check=a.check)
        if a.check and not same:
            print(f"{readme}: the ledger table differs from {a.results}; run python scripts/render_ledger.py")
            stale += 1
        else:
            print(f"{readme}: ledger table {'up to date' if same else 'rewritten'}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
