"""Writes the alert rules: ``python3 -m alerts [--set name=value ...] [--output PATH]``.

Without --output it rewrites alerts/bitbucket-mirror.rules.yml, the committed file (a test fails when that is out of
date). With --set, render rules for your own thresholds and job label, e.g. ``--set 'selector=job="bb-mirrors"'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alerts.rules import RULES_FILE, AlertConfig, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m alerts", description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a setting")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent.parent / RULES_FILE)
    args = parser.parse_args(argv)
    try:
        config = AlertConfig.from_settings(args.set)
    except ValueError as exc:
        print(f"python3 -m alerts: {exc}", file=sys.stderr)
        return 2
    args.output.write_text(render(config), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
