"""``python -m fedge.agent.training.modelgen [--out DIR] [--check] [NAME...]``: rebuild the model zoo.

``--specs`` rebuilds the example specs instead (``agent/models/specs/*.toml``, each built beside
its spec, as ``fedge-coordinator models build`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fedge.agent.training.modelgen.build import RECIPES, build  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models"
SPECS_DIR = DEFAULT_OUT / "specs"


def specs_main(check: bool, names: list[str]) -> int:
    """Build (or ``check``) every example spec, or those named."""
    from fedge.agent.training.modelgen.custom import build_file, same_as_written, write

    failed = 0
    for spec in sorted(SPECS_DIR.glob("*.toml")):
        if names and spec.stem not in names:
            continue
        built = build_file(spec)
        if check:
            same = same_as_written(built, SPECS_DIR)
            print(f"{built.net.name}: {'identical' if same else 'DIFFERS'}")
            failed += not same
        else:
            write(built, SPECS_DIR)
            print(f"{built.net.name}: {len(built.data)} bytes in {built.seconds:.1f} s; " + "; ".join(built.lines()))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedge.agent.training.modelgen", description=__doc__)
    p.add_argument("names", nargs="*")
    p.add_argument("--specs", action="store_true", help="rebuild the example specs in agent/models/specs/")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--check", action="store_true", help="rebuild and compare with the files in --out")
    args = p.parse_args(argv)
    if args.specs:
        return specs_main(args.check, args.names)
    failed = 0
    for name in args.names or sorted(RECIPES):
        data, meta = build(name)
        tfl, js = args.out / f"{name}.tflite", args.out / f"{name}.json"
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        if args.check:
            same = tfl.exists() and tfl.read_bytes() == data and js.read_text() == text
            print(f"{name}: {'identical' if same else 'DIFFERS'}")
            failed += not same
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            tfl.write_bytes(data)
            js.write_text(text)
            print(f"{name}: {len(data)} bytes, sha256 {meta['sha256'][:16]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
