"""``python3 -m dashboards``: render every dashboard into dashboards/generated/ (or ``--output DIR``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dashboards.build import GENERATED, rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dashboards", description=__doc__)
    parser.add_argument("--output", type=Path, default=GENERATED, help="folder for the JSON files")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (args.output / name).write_text(text)
        print(args.output / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
