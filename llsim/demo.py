"""`make demo`: the main job on the built-in default scenario.

Simulates ``scenarios/demo.yaml`` (BLOOM-560m on three phones over Wi-Fi) into ``out/demo/run``,
then shows the real-artifact side: the tiny BLOOM zoo model cut into 3 runnable ONNX segments,
verified against the full model.
"""
from __future__ import annotations

import sys

from llsim.cli.main import main as cli


def main() -> int:
    steps = [
        ["run", "demo", "--out", "out/demo/run", "--force"],
        ["model", "split", "tiny-bloom", "--segments", "3", "--out", "out/demo/tiny-bloom-segments", "--verify",
         "--force"],
    ]
    for argv in steps:
        print(f"\n$ llsim {' '.join(argv)}", flush=True)
        code = cli(argv)
        if code:
            return code
    print("\ndemo done: simulation results in out/demo/run (open timeline.json in https://ui.perfetto.dev), "
          "segments + plan.json in out/demo/tiny-bloom-segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
