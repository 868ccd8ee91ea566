import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests exercise the mini CLIP pretraining and cache; the one test of the shipped copy re-enables it.
os.environ.setdefault("PATSEG_NO_SHIPPED_MINI_CLIP", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tests' tensors are tiny, and on a busy 2-core machine a second OpenMP thread makes
# every small op wait for a descheduled worker (a tiny PAT step went from 0.17 s to 1.7 s). PATSEG_TEST_THREADS
# overrides it.
torch.set_num_threads(int(os.environ.get("PATSEG_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
