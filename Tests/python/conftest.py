import os
import warnings

import numpy as np
import pytest

warnings.filterwarnings("ignore", message=".*CUDA.*")
os.environ.setdefault("BNB_CUDA_VERSION", "")


@pytest.fixture
def rng(request):
    # a different but reproducible stream per test
    seed = abs(hash(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)
