"""``pglab record RUN --out agent.gif``: the trained agent on video.

The env is made once more with ``render_mode="rgb_array"`` (and the run's options and
preprocessing); the agent acts on its observations as in evaluation (frozen
normalisation, the most likely action unless asked otherwise) while every frame of
the unprocessed env is kept. GIFs are written with Pillow (installed with pglab);
MP4s with imageio and its ffmpeg plugin (the extra ``pglab[video]``). The file
appears only once it is complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from pglab.agent import Agent
from pglab.envs import entry_class, import_path, validate_env_id
from pglab.envs.scores import SCORE_KEY, GameScore
from pglab.envs.spaces import MASK_KEY
from pglab.envs.wrappers import resolve_wrappers
from pglab.errors import ConfigError, EnvError, PglabError
from pglab.evaluate import EvalResult
from pglab.logs import Progress
from pglab.paths import write_atomic
from pglab.rollout import EpisodeStats

FORMATS = (".gif", ".mp4")


@dataclass
class Recording:
    """What was recorded: the file, its frames and each episode's return."""

    path: Path
    frames: int
    returns: list[float]


#: Where each frame goes as it is drawn.
Sink = Callable[[np.ndarray], None]


def render_env(agent: Agent) -> gym.Env:
    """One copy of the agent's env that renders RGB frames (with the run's preprocessing)."""
    env_cfg = agent.config.env
    if env_cfg.object:
        raise EnvError(
            f"env {env_cfg.id!r} was given as a Python object ({env_cfg.object}); "
            "pglab record makes its env from the run's config and cannot make this one"
        )
    validate_env_id(env_cfg.id)
    for var in ("SDL_VIDEODRIVER", "SDL_AUDIODRIVER"):  # pygame-drawn envs need no screen
        os.environ.setdefault(var, "dummy")
    kwargs = {**env_cfg.kwargs, "render_mode": "rgb_array"}
    wrappers = []
    if env_cfg.preprocess != "none":
        from pglab.envs.atari import PREPROCESSORS

        wrapper, needed = PREPROCESSORS[env_cfg.preprocess]
        wrappers, kwargs = [wrapper], {**needed, **kwargs}
    env_class = entry_class(env_cfg.id)
    try:
        with import_path():
            env = env_class(**kwargs) if env_class is not None else gym.make(env_cfg.id, **kwargs)
    except TypeError as error:
        raise EnvError(f"{env_cfg.id} cannot render RGB frames: {error}") from None
    env = GameScore(env)  # the game's own score, under any reward-changing wrapper
    for wrap in [*wrappers, *resolve_wrappers(env_cfg.wrappers)]:
        env = wrap(env)
    if env_cfg.frame_stack > 1:
        env = gym.wrappers.FrameStackObservation(env, env_cfg.frame_stack)
    return env


def record(
    agent: Agent,
    out: str | Path,
    episodes: int = 1,
    *,
    seed: int = 0,
    fps: int | None = None,
    deterministic: bool = True,
    max_frames: int = 20_000,
    progress_mode: str = "auto",
) -> Recording:
    """Play ``episodes`` episodes (env seeds ``seed``, ``seed + 1``, ...) and write them
    to ``out`` (.gif or .mp4), at most ``max_frames`` frames. The file is written whole
    or not at all, replacing (never following) a link at ``out``; ``progress_mode`` shows
    the episodes done (see :class:`~pglab.logs.Progress`)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out must end in {' or '.join(FORMATS)}; got {str(out)!r}")
    if episodes < 1:
        raise ConfigError(f"--episodes must be an integer >= 1; got {episodes}")
    if fps is not None and not 1 <= fps <= 1000:
        raise ConfigError(f"--fps must be an integer in [1, 1000]; got {fps}")
    mp4 = out.suffix.lower() == ".mp4"
    if mp4:
        _check_mp4_writer()
    env = render_env(agent)
    frames = 0
    returns: list[float] = []
    progress = Progress(progress_mode, episodes, f"record {out.name}", unit="episodes")

    def play(sink: Sink) -> None:
        """Play the episodes, handing each frame to ``sink`` as it is drawn."""
        nonlocal frames
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            sink(env.render())
            frames += 1
            total, done = 0.0, False
            while not done and frames < max_frames:
                action = agent.act(obs, deterministic, info.get(MASK_KEY))
                obs, reward, terminated, truncated, info = env.step(action)
                sink(env.render())
                frames += 1
                total += float(reward)
                done = terminated or truncated
            returns.append(float(info.get(SCORE_KEY, total)) if done else total)
            progress.update(len(returns), {"frames": frames, "return": returns[-1]})

    with import_path():  # rendering may import (pygame, say): never from the current folder
        try:
            env.reset(seed=seed)
            try:
                env.render()
            except gym.error.DependencyNotInstalled as error:
                raise EnvError(
                    f"{agent.config.env.id} cannot render: {error} "
                    "(pip install 'pglab[video]' installs pygame)"
                ) from None
            rate = fps or int(env.metadata.get("render_fps") or 30)

            def write(temp: Path) -> None:
                if mp4:
                    _write_mp4(temp, play, rate)
                else:
                    _write_gif(temp, play, rate)

            write_atomic(out, write, out.parent)
        finally:
            progress.close()
            env.close()
    return Recording(out, frames, returns)


def _write_gif(path: Path, play: Callable[[Sink], None], fps: int) -> None:
    """A GIF of the frames ``play`` draws, each kept as a 256-colour image (a third of
    its RGB size) until the file is written: for long recordings, write an MP4."""
    from PIL import Image

    images: list[Image.Image] = []
    play(lambda frame: images.append(Image.fromarray(np.asarray(frame, np.uint8)).quantize()))
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )


def _check_mp4_writer() -> None:
    try:
        import imageio.v2  # noqa: F401
        import imageio_ffmpeg  # noqa: F401  (the plugin imageio uses for mp4)
    except ImportError:
        raise PglabError("writing .mp4 needs the video extra: pip install 'pglab[video]'") from None


def _write_mp4(path: Path, play: Callable[[Sink], None], fps: int) -> None:
    """An MP4 of the frames ``play`` draws, each encoded as it comes (memory stays
    bounded, whatever the length)."""
    import imageio.v2 as imageio

    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, macro_block_size=1)
    try:
        play(writer.append_data)
    finally:
        writer.close()


def plot_lineworld(
    agent: Agent, out: str | Path, episodes: int = 20, *, seed: int = 0, deterministic: bool = True
) -> EvalResult:
    """Draw the agent's line-world trajectories (offset from the target against the step;
    the L1 distance on a grid) with the success rate in the title; returns the statistics
    of exactly the episodes drawn (what ``pglab eval --plot`` prints)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"--plot must end in .png, .svg or .pdf; got {str(out)!r}")
    if not agent.config.env.id.startswith("pglab/LineWorld"):
        raise ConfigError(
            f"--plot draws line-world trajectories; this run's env is {agent.config.env.id}"
        )
    env = gym.make(agent.config.env.id, **agent.config.env.kwargs)
    dims = env.unwrapped.dimensions
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    stats = EpisodeStats()
    successes = stats.successes
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        path = [obs]
        done, info, total = False, {}, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs, deterministic))
            path.append(obs)
            total += float(reward)
            done = terminated or truncated
        successes.append(bool(info.get("success", False)))
        stats.returns.append(total)
        stats.lengths.append(len(path) - 1)
        track = np.array(path)
        offset = track[:, :dims] - track[:, dims:]
        y = offset[:, 0] if dims == 1 else np.abs(offset).sum(axis=1)
        ax.plot(np.arange(len(y)), y, color="tab:green" if successes[-1] else "tab:red", alpha=0.6)
    env.close()
    rate = float(np.mean(successes))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("position - target" if dims == 1 else "L1 distance to the target")
    ax.set_title(f"{agent.config.env.id}: {episodes} episodes, success rate {rate:.0%}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(out, lambda temp: fig.savefig(temp, format=out.suffix[1:].lower()), out.parent)
    plt.close(fig)
    return EvalResult.from_stats(stats)
