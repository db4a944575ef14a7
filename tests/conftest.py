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


# Hypothesis profiles for the panel property tests (tests/test_panel_properties.py): ``ci`` by
# default (the whole property run stays under a minute), ``HYPOTHESIS_PROFILE=slow`` for more.
try:
    import os

    from hypothesis import HealthCheck, settings

    _slow_checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                              suppress_health_check=_slow_checks)
    settings.register_profile("slow", max_examples=1000, deadline=None, suppress_health_check=_slow_checks)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is in the test extra; without it the property tests skip
    pass
