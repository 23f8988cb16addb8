import os

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for every test that needs one (each start costs seconds)."""
    pytest.importorskip("ray.tune")
    from pglab.experiments.sweep import ray_session

    with ray_session(None) as ray:
        yield ray
