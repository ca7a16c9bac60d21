import os

import pytest
import torch

# 2 threads on the 2-core CI machine; OMP_NUM_THREADS=1 when other work shares the CPU
# (two processes with 2 spinning threads each slow each other down many times over)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))


@pytest.fixture(autouse=True)
def _lenient_checks(monkeypatch):
    """Tests call lab checks with wrong answers on purpose: report, do not raise;
    and every test starts with no recorded attempts."""
    from xailab.checks import core
    monkeypatch.delenv("XAILAB_STRICT_CHECKS", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    core.reset()


@pytest.fixture(scope="session")
def shapesnet():
    from xailab import models
    return models.load("shapesnet")


@pytest.fixture(scope="session")
def test_split():
    from xailab.data import shapes
    return shapes("test", 2000, seed=123)
