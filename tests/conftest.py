import os

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
