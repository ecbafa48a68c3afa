"""Backend switches the Trainer makes for its device (the device objects are only descriptors: no GPU needed)."""
import pytest
import torch

from fastssl.train.trainer import configure_backends


@pytest.fixture
def cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


def test_cuda_turns_on_cudnn_benchmark(cudnn_benchmark):
    torch.backends.cudnn.benchmark = False
    configure_backends(torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize("initial", [False, True])
def test_cpu_leaves_cudnn_alone(cudnn_benchmark, initial):
    torch.backends.cudnn.benchmark = initial
    configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is initial
