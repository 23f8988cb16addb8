"""REINFORCE speed: pglab against the tutorial-style loop, side by side.

pglab's REINFORCE (20 episodes per batch, ``fr`` weights, one hidden layer of 8, Adam
lr 0.01, CartPole-v1) and a tutorial-style loop of the same algorithm (one env, one
forward per step), each seed in its own process; prints both steps/s and their ratio.
The REINFORCE part of ``pglab bench`` (see :mod:`pglab.bench`), writing its report to
``benchmarks/results/reinforce_speed.md`` unless ``--out`` says otherwise:

    python benchmarks/reinforce_speed.py [--seeds 0-4] [--reinforce-steps 100000]
"""

import sys
from pathlib import Path

from pglab.bench import main

if __name__ == "__main__":
    argv = ["--parts", "reinforce", *sys.argv[1:]]
    if "--out" not in argv:
        argv += ["--out", str(Path(__file__).parent / "results" / "reinforce_speed.md")]
    sys.exit(main(argv))
