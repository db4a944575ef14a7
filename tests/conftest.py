"""Shared pytest fixtures for labkit: the ``tiny`` model, and a CUDA-only marker."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``-n N``) each worker gets cores // N torch threads, and so do the
    processes it starts (lab kernels, CLI runs): N workers × all cores would oversubscribe the
    CPU, and OpenMP's spinning threads then make every test slower, not faster."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_workers()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist, the controller makes the shared ``tiny`` (when LABKIT_HOME lacks it) before the
    workers start: a copy of the shipped build, or with LABKIT_TINY_FROM_SCRATCH=1 a pretraining on
    every core (in a worker it would run on one core while the other worker's tests wait for it).
    A failure is left to the tests that need tiny to report."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None) \
            or config.getoption("dist", "no") == "no":
        return
    from labkit.models.tiny import default_tiny_dir, ensure_tiny, is_built

    if not is_built(default_tiny_dir()):
        try:
            ensure_tiny(progress=False)
        except Exception as error:  # noqa: BLE001 - reported by the tests that load tiny
            print(f"conftest: could not make tiny before the workers started: {error}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For ``-n N --dist loadgroup`` (the README's command): a module with a module-scoped fixture runs
    on one worker (its fixture is built once), every other test goes wherever a worker is free; and the
    longest work starts first (``slow`` tests: the lab smokes and the accuracy tests), so no worker is left
    with it at the end."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for defs in (info.name2fixturedefs.values() if info else ()) for d in defs}
        if scopes & {"module", "class"} and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: collection order otherwise


def load_benchmark(name: str) -> Any:
    """A script of ``benchmarks/`` imported as a module (registered in ``sys.modules``, where dataclasses look
    their module up)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line with every lab's smoke time (the speed issue's per-lab figures), also under xdist,
    where the workers' own prints are not shown: read from the test reports the controller holds."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "") == "call" and "test_lab_smoke[" in getattr(r, "nodeid", "")]
    if reports:
        times = {r.nodeid.split("[", 1)[1].rstrip("]"): r.duration for r in reports}
        terminalreporter.write_line("lab smoke seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(times.items()))
                                    + f"; total {sum(times.values()):.0f} s, slowest {max(times.values()):.0f} s")
