import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6

import pytest
import torch

import batmobile_nn  # noqa: F401  (registers the ops)

# Tests use small tensors: intra-op threads only add overhead (measured ~20x slower on 2-core CI VMs).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def default_dtype(dtype):
    """Build e3nn modules in the test's dtype: e3nn keeps its constants in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    yield dtype
    torch.set_default_dtype(previous)
