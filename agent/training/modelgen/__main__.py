"""``python -m fedge.agent.training.modelgen [--out DIR] [--check] [NAME...]``: rebuild the model zoo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fedge.agent.training.modelgen.build import RECIPES, build  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedge.agent.training.modelgen", description=__doc__)
    p.add_argument("names", nargs="*", default=sorted(RECIPES))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--check", action="store_true", help="rebuild and compare with the files in --out")
    args = p.parse_args(argv)
    failed = 0
    for name in args.names:
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
