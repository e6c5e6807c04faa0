import os

import pytest
import torch

# Two cores, shared: keep intra-op threads bounded so tests don't oversubscribe.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def f64():
    return dict(dtype=torch.float64)
