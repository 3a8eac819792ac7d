import os
import warnings

import numpy as np
import pytest

warnings.filterwarnings("ignore", message=".*CUDA.*")
os.environ.setdefault("BNB_CUDA_VERSION", "")


@pytest.fixture
def rng(request):
    """Fresh random data on every run (the comparisons against the real libraries must hold
    for any input); the seed is printed so that a failure can be replayed with PST_SEED."""
    seed = int(os.environ.get("PST_SEED", np.random.SeedSequence().entropy % (2**32)))
    print(f"rng seed for {request.node.nodeid}: {seed} (replay with PST_SEED={seed})")
    return np.random.default_rng(seed)
