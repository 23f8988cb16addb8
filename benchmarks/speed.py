"""Speed benchmark: pglab against Stable-Baselines3 and the tutorial REINFORCE loop.

The same as ``pglab bench`` (see :mod:`pglab.bench`), writing its report to
``benchmarks/results/speed.md`` unless ``--out`` says otherwise:

    python benchmarks/speed.py --with-sb3 [--seeds 0-4] [--parts solve,throughput,...]
"""

import sys
from pathlib import Path

from pglab.bench import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        argv += ["--out", str(Path(__file__).parent / "results" / "speed.md")]
    sys.exit(main(argv))
