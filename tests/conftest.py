"""Shared pytest fixtures for labkit: the ``tiny`` model, and a CUDA-only marker."""

from __future__ import annotations

import pytest
import torch


def requires_cuda(test):
    """Decorator for GPU-only tests: marks ``gpu`` and skips where no CUDA device exists."""
    test = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test)
    return pytest.mark.gpu(test)


@pytest.fixture(scope="session")
def tiny():
    """``(model, tokenizer)`` of labkit's ``tiny`` base (pretrained once into LABKIT_HOME)."""
    from labkit.models import load_model, load_tokenizer

    return load_model("tiny"), load_tokenizer("tiny")
