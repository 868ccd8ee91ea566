import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PATSEG_NO_DOWNLOAD", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
