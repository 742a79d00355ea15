"""Fixtures shared by the model tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """OpenSTL's recurrent fixtures were made at 1 thread, and OpenSTL itself moves by up to
    5e-6 between 1 and 2 threads (spec/parity/rnn/README.md): compare the same way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
