import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shapesnet():
    from xailab import models
    return models.load("shapesnet")


@pytest.fixture(scope="session")
def test_split():
    from xailab.data import shapes
    return shapes("test", 2000, seed=123)
