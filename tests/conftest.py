"""Shared test setup.

`DLOR_STRICT_SKIPS=1` (set by .ci/run) turns every skip into a failure: CI has all
services (PostgreSQL, Chromium, ...), so a skip there means something went untested.
The one exception is tests marked `gpu`: CI machines have no CUDA device.
"""

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("DLOR_STRICT_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is None):
        report.outcome = "failed"
        report.longrepr = f"skipped in strict CI mode: {report.longrepr}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny float64 ops: intra-op threads only add contention on shared CPUs (tanh 10×)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
