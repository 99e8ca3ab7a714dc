"""Shared pytest set-up: offline hub, smoke profile, and fixtures for the embedded model.

The suite never downloads: HF_HUB_OFFLINE=1 makes an accidental hub call fail loudly.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PEFTLAB_PROFILE", "smoke")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The notebooks' exercise checkers check the solutions in notebooks/solutions/ instead of the cells'
# stubs. nbval's kernels inherit this whenever tests/ is collected too (`make test`: tests notebooks);
# a notebook run on its own (`pytest --nbval-lax notebooks/02_….ipynb`, or PEFTLAB_SOLUTIONS=0) runs
# as a learner who solved nothing. tests/test_exercises.py turns it off for its own checks.
os.environ.setdefault("PEFTLAB_SOLUTIONS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on Colab or a GPU lab)")
    for item in items:
        if item.get_closest_marker("gpu"):  # the marker, not any keyword (a folder named gpu matched)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_ready():
    """The prepared embedded model folder; skips with the fix if it is not prepared."""
    from peftlab import models

    if not models.is_prepared():
        pytest.fail("embedded model not prepared: run `make test` (it runs `peftlab prepare`)")
    return models.embedded_path()
