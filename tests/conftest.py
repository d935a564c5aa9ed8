import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VILD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set VILD_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
