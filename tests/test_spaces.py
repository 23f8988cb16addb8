"""Every standard Gymnasium space trains with every algorithm, acts, saves, loads and
evaluates; a population over them trains as its single runs; known tasks are solved."""

import csv

import gymnasium as gym
import numpy as np
import pytest
import torch

import pglab
from pglab.envs.spaces import ObsEncoder, space_from_data, space_to_data
from pglab.errors import EnvError, PglabError
from pglab.nets import ImageCNN, ImagePart, compute_images_in, conv_layers
from space_envs import LENGTH, DictTask, ImageTask, MaskedEnv, MultiDiscreteTask, SpacesEnv

Box, Discrete = gym.spaces.Box, gym.spaces.Discrete

OBSERVATIONS = {
    "box": Box(-1.0, 1.0, (3,), np.float32),
    "image-hwc": Box(0, 255, (7, 7, 3), np.uint8),
    "discrete": Discrete(4, start=1),
    "multidiscrete": gym.spaces.MultiDiscrete([2, 3]),
    "multibinary": gym.spaces.MultiBinary(3),
    "tuple": gym.spaces.Tuple((Discrete(2), Box(0.0, 1.0, (2,), np.float32))),
    "dict": gym.spaces.Dict(
        {
            "image": Box(0, 255, (3, 8, 8), np.uint8),
            "inner": gym.spaces.Dict({"a": Discrete(3), "b": gym.spaces.MultiBinary(2)}),
        }
    ),
}
ACTIONS = {
    "discrete": Discrete(3, start=-1),
    "box": Box(-2.0, 2.0, (2,), np.float32),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 2]),
    "multibinary": gym.spaces.MultiBinary(2),
}
ALGOS = ["ppo", "a2c", "trpo", "reinforce"]
TINY = {
    "progress": "off",
    "eval_episodes": 2,
    "checkpoint_every": 0,
    "preset": "none",
    "policy": {"hidden": [16], "value_hidden": [16]},
}


def _options(algo):
    if algo == "reinforce":
        return {"weights": "gae", "batch_size": 4, "total_steps": 200, "value_epochs": 2}
    options = {"num_envs": 2, "batch_size": 32, "total_steps": 160}
    if algo == "ppo":
        options.update(epochs=2, minibatches=2)
    if algo == "trpo":
        options.update(value_epochs=2)
    return options


def _matrix():
    for i, obs in enumerate(OBSERVATIONS):
        for j, action in enumerate(ACTIONS):
            yield obs, action, ALGOS[(i + j) % len(ALGOS)]  # every pair; each algo on each


@pytest.mark.parametrize(("obs", "action", "algo"), list(_matrix()))
def test_every_space_trains_acts_saves_loads_and_evaluates(obs, action, algo, tmp_path):
    observation_space, action_space = OBSERVATIONS[obs], ACTIONS[action]

    def make():
        return SpacesEnv(observation_space, action_space)

    run = pglab.train(make, algo, seed=1, out=str(tmp_path), **_options(algo), **TINY)
    agent = pglab.load(run.path)
    assert agent.observation_space == observation_space and agent.action_space == action_space
    observation_space.seed(0)
    one = observation_space.sample()
    assert action_space.contains(agent.act(one, deterministic=False))
    batch = [observation_space.sample() for _ in range(3)]
    stacked = batch[0] if isinstance(one, dict) else None
    if isinstance(one, dict):
        stacked = gym.vector.utils.concatenate(
            observation_space, batch, gym.vector.utils.create_empty_array(observation_space, 3)
        )
    elif isinstance(one, tuple):
        stacked = tuple(np.stack([b[k] for b in batch]) for k in range(len(one)))
    else:
        stacked = np.stack(batch)
    actions = agent.act(stacked)
    assert len(actions) == 3 and all(action_space.contains(a) for a in actions)
    result = pglab.evaluate(agent, make, episodes=2)
    assert len(result.returns) == 2


def test_a_population_over_composite_spaces_trains_as_its_single_runs(tmp_path):
    def make():
        return SpacesEnv(OBSERVATIONS["dict"], ACTIONS["multidiscrete"])

    options = {**_options("ppo"), **TINY}
    alone = pglab.train(make, "ppo", seed=1, out=str(tmp_path / "alone"), **options)
    both = pglab.train(make, "ppo", seeds=[0, 1], out=str(tmp_path / "both"), **options)
    assert _rows(both[1]) == _rows(alone)


def _rows(run):
    """A run's metrics.csv without its timing columns."""
    with open(run.path / "metrics.csv") as f:
        skip = ("wall_seconds", "steps_per_second")
        return [{k: v for k, v in r.items() if k not in skip} for r in csv.DictReader(f)]


@pytest.mark.parametrize("algo", ALGOS)
def test_the_gsde_head_trains_with_every_algorithm_and_a_member_equals_its_run_alone(
    algo, tmp_path
):
    def make():
        return SpacesEnv(OBSERVATIONS["box"], ACTIONS["box"])

    options = {**_options(algo), **TINY}
    options["policy"] = {**TINY["policy"], "head": "gsde", "log_std_init": -1.0}
    alone = pglab.train(make, algo, seed=1, out=str(tmp_path / "alone"), **options)
    agent = pglab.load(alone.path)
    assert type(agent.actor.head).__name__ == "GSDEHead"
    obs = np.stack([OBSERVATIONS["box"].sample() for _ in range(4)])
    assert all(ACTIONS["box"].contains(a) for a in agent.act(obs, deterministic=False))
    assert np.array_equal(agent.act(obs), alone.agent.act(obs))
    assert len(pglab.evaluate(agent, make, episodes=2).returns) == 2
    both = pglab.train(make, algo, seeds=[0, 1], out=str(tmp_path / "both"), **options)
    assert _rows(both[1]) == _rows(alone)


def test_observations_encode_part_by_part():
    space = OBSERVATIONS["dict"]
    encoder = ObsEncoder(space)
    assert encoder.dim == 3 * 8 * 8 + 3 + 2
    [image] = encoder.images
    assert image.offset == 0 and image.chw == (3, 8, 8)
    obs = {
        "image": np.full((1, 3, 8, 8), 255, np.uint8),
        "inner": {"a": np.array([2]), "b": np.array([[1, 0]])},
    }
    row = encoder.array(obs)[0]
    assert row[:192].min() == 255 and list(row[192:]) == [0, 0, 1, 1, 0]
    multi = ObsEncoder(gym.spaces.MultiDiscrete([2, 3], start=[1, 0]))
    assert multi.array(np.array([[2, 1]])).tolist() == [[0, 1, 0, 1, 0]]


def test_images_are_read_channels_last_or_first_and_scaled():
    last = ImagePart(0, (2, 3, 1))
    first = ImagePart(0, (1, 2, 3))
    pixels = torch.arange(6.0)
    assert last.chw == first.chw == (1, 2, 3)
    assert torch.equal(last.frames(pixels[None]), first.frames(pixels[None]))
    assert float(last.frames(torch.full((1, 6), 255.0)).max()) == 1.0


@pytest.mark.parametrize("shape", [(7, 7, 3), (3, 12, 12), (96, 96, 3), (4, 84, 84), (5, 5)])
def test_the_cnn_fits_any_image_size(shape):
    part = ImagePart(0, shape)
    cnn = ImageCNN(part, units=32)
    assert cnn(torch.zeros(2, 5, part.size)).shape == (2, 5, 32)
    if min(shape[-2:]) >= 36:
        assert [k for _, k, _, _ in conv_layers(*part.chw)] == [8, 4, 3]  # the Atari CNN


def test_large_images_enter_the_cnn_channels_last_with_the_same_features_and_gradients():
    torch.manual_seed(0)
    cnn = ImageCNN(ImagePart(0, (4, 84, 84)), units=32)
    assert cnn.channels_last and not ImageCNN(ImagePart(0, (7, 7, 3)), units=8).channels_last
    obs = torch.rand(6, 4 * 84 * 84) * 255
    assert torch.equal(cnn.part.frames(obs, channels_last=True), cnn.part.frames(obs))
    results = []
    for channels_last in (True, False):  # the fast path, then the plain one
        cnn.channels_last = channels_last
        features = cnn(obs)
        results.append((features, torch.autograd.grad(features.square().sum(), cnn.parameters())))
    (fast, fast_grads), (plain, plain_grads) = results
    assert torch.allclose(fast, plain, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(fast_grads, plain_grads))


def test_a_bfloat16_cnn_gives_float32_features_near_the_float32_ones_and_keeps_its_weights():
    torch.manual_seed(0)
    cnn = ImageCNN(ImagePart(0, (4, 84, 84)), units=32)
    obs = torch.rand(6, 4 * 84 * 84) * 255
    plain = cnn(obs)
    plain_grads = torch.autograd.grad(plain.square().sum(), cnn.parameters())
    assert compute_images_in(cnn, "bfloat16") == 1
    mixed = cnn(obs)
    mixed_grads = torch.autograd.grad(mixed.square().sum(), cnn.parameters())
    assert mixed.dtype == torch.float32 and not torch.equal(mixed, plain)
    # bfloat16 keeps 8 significant bits: each layer rounds by about 2**-8 of its values
    assert torch.allclose(mixed, plain, rtol=0.05, atol=0.05 * plain.abs().max().item())
    for a, b in zip(mixed_grads, plain_grads):
        assert a.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    assert all(p.dtype == torch.float32 for p in cnn.parameters())


def test_a_bfloat16_cnn_without_gradients_rounds_its_weights_once_and_gives_the_same_features():
    """Acting and scoring (eval mode, no gradients) pass through cached bfloat16 weights,
    rounded again after a mode switch or a change of a parameter; the update's autocast
    pass gives the very same numbers."""
    torch.manual_seed(0)
    cnn = ImageCNN(ImagePart(0, (84, 84, 4)), units=32)
    compute_images_in(cnn, "bfloat16")
    cnn.eval()
    obs = torch.randint(0, 256, (6, 4 * 84 * 84), dtype=torch.uint8)  # the env's bytes
    with torch.inference_mode():
        cached = cnn(obs)
    rounded = cnn._rounded
    with torch.no_grad():
        assert torch.equal(cnn(obs), cached) and cnn._rounded is rounded  # reused
    assert torch.equal(cnn(obs).detach(), cached)  # autocast, with gradients
    with torch.no_grad():
        cnn.fc[0].weight.mul_(1.5)  # an optimizer step changes a parameter in place
        stepped = cnn(obs)
    assert cnn._rounded is not rounded and torch.equal(stepped, cnn(obs).detach())
    assert not torch.equal(stepped, cached)
    cnn.train()  # an update: the cache is gone, and training passes never use it
    assert cnn._rounded is None
    with torch.no_grad():
        cnn(obs)
    assert cnn._rounded is None


def test_bytes_and_floats_give_the_same_frames_in_either_layout():
    for shape in [(84, 84, 4), (4, 84, 84), (84, 84)]:
        part = ImagePart(0, shape)
        raw = torch.randint(0, 256, (5, part.size), dtype=torch.uint8)
        frames = part.frames(raw, channels_last=True)
        assert frames.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(frames, part.frames(raw.float(), channels_last=True))
        assert torch.equal(frames, part.frames(raw))


def test_bfloat16_precision_without_an_image_body_is_refused_in_one_line(tmp_path):
    with pytest.raises(PglabError, match="policy.precision = 'bfloat16' applies to .* image"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), precision="bfloat16", **TINY)
    assert not any(tmp_path.iterdir())


def test_spaces_round_trip_through_a_checkpoints_data():
    for space in [*OBSERVATIONS.values(), *ACTIONS.values()]:
        assert space_from_data(space_to_data(space)) == space
    with pytest.raises(EnvError, match="malformed space"):
        space_from_data({"type": "Box", "low": "x"}, "file.pt")


def test_text_observations_are_refused_in_one_line(tmp_path):
    def make():
        return SpacesEnv(gym.spaces.Text(5), Discrete(2))

    with pytest.raises(EnvError, match="Text.*pglab supports"):
        pglab.train(make, "ppo", out=str(tmp_path), **TINY)


def test_text_in_a_dict_observation_trains_once_a_wrapper_drops_it(tmp_path):
    space = gym.spaces.Dict({"x": Box(-1, 1, (3,)), "mission": gym.spaces.Text(8)})

    def make():
        return SpacesEnv(space, Discrete(2))

    with pytest.raises(EnvError, match="Text"):
        pglab.train(make, "ppo", out=str(tmp_path / "raw"), **_options("ppo"), **TINY)
    drop = {"name": "gymnasium.wrappers.FilterObservation", "kwargs": {"filter_keys": ["x"]}}
    run = pglab.train(
        make, "ppo", wrappers=[drop], out=str(tmp_path / "kept"), **_options("ppo"), **TINY
    )
    assert run.agent.observation_space == gym.spaces.Dict({"x": Box(-1, 1, (3,))})


def _solve(env_id, algo, tmp_path, **options):
    settings = {**TINY, "policy": {}, "eval_every": 2000, "eval_episodes": 20, **options}
    run = pglab.train(
        env_id, algo, seed=0, out=str(tmp_path), stop_at_return=LENGTH - 0.01, **settings
    )
    assert run.summary["eval_return_mean"] >= LENGTH - 0.01, run.summary
    return run


@pytest.mark.slow
def test_a_dict_observation_task_is_solved(tmp_path):
    _solve("space_envs:DictTask", "ppo", tmp_path, total_steps=40_000)


@pytest.mark.slow
def test_a_multidiscrete_action_task_is_solved(tmp_path):
    _solve("space_envs:MultiDiscreteTask", "ppo", tmp_path, total_steps=40_000)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_small_image_task_is_solved_by_the_automatic_cnn(tmp_path, precision):
    run = _solve(
        "space_envs:ImageTask", "ppo", tmp_path, total_steps=40_000, epochs=4, minibatches=8,
        precision=precision,
    )  # fmt: skip
    assert isinstance(run.agent.actor.body, ImageCNN)
    loaded = pglab.load(run.path, allow_import=["space_envs"])
    assert loaded.actor.body.precision == precision  # kept by the checkpoint


@pytest.mark.slow
def test_frozenlake_without_slipping_is_solved(tmp_path):
    run = pglab.train(
        "FrozenLake-v1", "ppo", seed=0, out=str(tmp_path), kwargs={"is_slippery": False},
        total_steps=50_000, stop_at_return=1.0, eval_every=5000, eval_episodes=20,
        progress="off", checkpoint_every=0,
    )  # fmt: skip
    assert run.summary["eval_success_rate"] == 1.0 or run.summary["eval_return_mean"] == 1.0


def test_the_tasks_pay_their_best_return():
    for task, best in ((DictTask(), lambda o, e: o["goal"]), (ImageTask(), lambda o, e: e._side)):
        obs, _ = task.reset(seed=0)
        total, done = 0.0, False
        while not done:
            obs, reward, done, _, _ = task.step(best(obs, task))
            total += reward
        assert total == LENGTH
    task = MultiDiscreteTask()
    obs, _ = task.reset(seed=0)
    _, reward, _, _, _ = task.step(np.array(task._target))
    assert reward == 1.0


def test_evaluation_reports_the_games_score_not_the_clipped_rewards(tmp_path):
    clip = {
        "name": "gymnasium.wrappers.ClipReward",
        "kwargs": {"min_reward": -1.0, "max_reward": 1.0},
    }
    run = pglab.train(
        "space_envs:Fives", "ppo", wrappers=[clip], out=str(tmp_path), **_options("ppo"), **TINY
    )
    assert run.summary["eval_return_mean"] == 30.0  # the game's score, 6 x 5
    result = pglab.evaluate(run.agent, episodes=2)
    assert result.mean == 30.0 and result.reward_mean == 6.0  # trained on clipped rewards
    assert pglab.evaluate(run.agent, "space_envs:Fives", episodes=2).reward_mean == 6.0


def test_frames_stack_for_vectors_and_images(tmp_path):
    run = pglab.train(
        "CartPole-v1", "ppo", frame_stack=3, out=str(tmp_path / "v"), **_options("ppo"), **TINY
    )
    assert run.agent.observation_space.shape == (3, 4)
    run = pglab.train(
        "space_envs:ImageTask",
        "a2c",
        frame_stack=2,
        out=str(tmp_path / "i"),
        **_options("a2c"),
        **TINY,
    )
    assert run.agent.actor.body.part.chw == (6, 7, 7)


def test_a_preset_applies_only_to_the_kwargs_it_was_tuned_for(capsys):
    from pglab.config import build_config

    plain = build_config(flags={"env.id": "LunarLander-v3", "algo.name": "ppo"})
    assert plain.run.preset == "ppo/LunarLander-v3"
    continuous = {"continuous": True}
    flags = {"env.id": "LunarLander-v3", "algo.name": "ppo", "env.kwargs": continuous}
    assert build_config(flags=flags).run.preset == "ppo/LunarLander-v3-continuous"
    assert capsys.readouterr().err == ""
    flags["env.kwargs"] = {**continuous, "gravity": -5.0}
    other = build_config(flags=flags)
    assert other.run.preset == "none" and other.algo.batch_size != plain.algo.batch_size
    assert "none is applied" in capsys.readouterr().err


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(("source", "nvec"), [("info", ()), ("obs", ()), ("info", (3, 2))])
def test_a_masked_action_is_never_taken(algo, source, nvec, tmp_path):
    def make():
        return MaskedEnv(in_obs=source == "obs", nvec=nvec)

    # (env.check off: Gymnasium's env checker steps with random, unmasked actions)
    options = {**_options(algo), **TINY, "check": False}
    options["action_mask"] = "info" if source == "info" else "auto"
    run = pglab.train(make, algo, seed=0, out=str(tmp_path), **options)  # illegal: EnvFaultError
    assert run.agent.actor.mask_dim == sum(nvec or (4,))
    assert pglab.evaluate(run.agent, make, episodes=3, deterministic=False).mean >= 0


def test_agent_act_never_picks_a_masked_action(tmp_path):
    run = pglab.train(
        lambda: MaskedEnv(), "ppo", action_mask="info", check=False, out=str(tmp_path),
        **_options("ppo"), **TINY,
    )  # fmt: skip
    obs = np.zeros((200, 2), np.float32)
    legal = np.zeros((200, 4), np.float32)
    legal[:, [1, 3]] = 1
    actions = run.agent.act(obs, deterministic=False, action_mask=legal)
    assert set(np.asarray(actions).tolist()) <= {1, 3}


def test_a_mask_needs_a_categorical_action_space(tmp_path):
    def make():
        return SpacesEnv(OBSERVATIONS["box"], ACTIONS["box"])

    with pytest.raises(EnvError, match="action mask needs a Discrete"):
        pglab.train(make, "ppo", action_mask="info", out=str(tmp_path), **TINY)


def test_car_racing_pixels_train_end_to_end_with_the_automatic_cnn(tmp_path):
    pytest.importorskip("Box2D", reason="CarRacing needs pglab[box2d]")
    run = pglab.train(
        "CarRacing-v3", "ppo", seed=0, out=str(tmp_path), total_steps=256, batch_size=128,
        minibatches=2, epochs=1, max_episode_steps=40, progress="off", eval_episodes=1,
        checkpoint_every=0,
    )  # fmt: skip
    assert isinstance(run.agent.actor.body, ImageCNN)
    assert run.agent.actor.body.part.chw == (3, 96, 96)  # read height x width x channels
    agent = pglab.load(run.path)
    obs, _ = gym.make("CarRacing-v3").reset(seed=1)
    assert agent.act(obs).shape == (3,)
    assert np.isfinite(pglab.evaluate(agent, episodes=1).mean)
