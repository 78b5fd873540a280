"""`make demo`: the main job on the built-in default scenario.

For now (model graphs and segmentation): build the tiny BLOOM zoo model, inspect it, split it into
3 runnable ONNX segments and verify the chain against the full model. Outputs go to ``out/demo``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from llsim.cli.main import main as cli


def main() -> int:
    out = Path("out/demo")
    steps = [
        ["model", "inspect", "tiny-bloom", "--seq-len", "16"],
        ["model", "inspect", "bloom-7b1", "--seq-len", "128"],
        ["model", "split", "tiny-bloom", "--segments", "3", "--out", str(out / "tiny-bloom-segments"), "--verify"],
    ]
    for argv in steps:
        print(f"\n$ llsim {' '.join(argv)}", flush=True)
        code = cli(argv)
        if code:
            return code
    print(f"\ndemo done: segments and plan.json in {out / 'tiny-bloom-segments'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
