"""PureJaxRL's PPO on CartPole-v1 (gymnax) for many seeds at once, timed, for ``speed_envs.py``.

Runs in a Python environment of its own that has JAX, Flax, Optax, Distrax and gymnax,
with ``--purejaxrl`` naming a checkout of PureJaxRL's repository (neither is a pglab
dependency). The training function is PureJaxRL's own ``make_train`` with its own
default settings; it is jit-compiled once and vmapped over the seeds, as its README
shows. Prints one JSON line: the wall time with compilation (``seconds``), the
compilation alone (``compile_seconds``), and each seed's mean training-episode return
over its last update (``train_returns``).

    python -m venv jaxenv && jaxenv/bin/pip install "jax[cpu]==0.4.35" flax==0.10.2 \
        optax==0.2.4 distrax==0.1.5 chex==0.1.87 tensorflow-probability==0.24.0 \
        brax==0.12.1 navix "gymnax==0.0.9"
    git clone https://github.com/luchris429/purejaxrl
    jaxenv/bin/python purejaxrl_cartpole.py --purejaxrl purejaxrl --seeds 16 --steps 500000

(PureJaxRL's ``wrappers.py`` imports Brax and Navix; its ``ppo.py`` takes gymnax's API
before 0.1, whose ``step`` returns five values. With JAX 0.10 on a 2-core CPU its
compiled program stopped, idle, after some hundred updates; with JAX 0.4.35 it runs.)
"""

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purejaxrl", required=True, help="a checkout of PureJaxRL")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500_000)
    args = parser.parse_args()
    start = time.perf_counter()
    sys.path.insert(0, str(Path(args.purejaxrl) / "purejaxrl"))
    import jax
    from ppo import make_train

    config = {
        "LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": args.steps,
        "UPDATE_EPOCHS": 4, "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95,
        "CLIP_EPS": 0.2, "ENT_COEF": 0.01, "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5,
        "ACTIVATION": "tanh", "ENV_NAME": "CartPole-v1", "ANNEAL_LR": True, "DEBUG": False,
    }  # fmt: skip
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    train = jax.jit(jax.vmap(make_train(config)))
    compile_start = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_seconds = time.perf_counter() - compile_start
    out = jax.block_until_ready(compiled(keys))
    seconds = time.perf_counter() - start
    metrics = out["metrics"]
    done, returns = metrics["returned_episode"], metrics["returned_episode_returns"]
    finals = []
    for seed in range(args.seeds):
        last_done, last_returns = done[seed, -1], returns[seed, -1]
        finals.append(float(last_returns[last_done].mean()) if last_done.any() else None)
    print(json.dumps({"seconds": seconds, "compile_seconds": compile_seconds,
                      "train_returns": finals}))  # fmt: skip


if __name__ == "__main__":
    main()
