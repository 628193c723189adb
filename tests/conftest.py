"""Shared fixtures: the native and pure-Python implementations of each hot path."""

from __future__ import annotations

import os

import pytest

from shoal import _native


def both(name: str):
    """A fixture over the native module and its pure-Python twin (the twin only if not built)."""
    impls = [_native.pure(name)]
    mod = _native.native(name)
    if mod is not None:
        impls.insert(0, mod)

    @pytest.fixture(params=impls, ids=lambda m: m.__name__.split(".")[1])
    def fixture(request):
        return request.param

    return fixture


def native_required() -> bool:
    """On CI the native build must be there: a silent fallback would hide a broken build."""
    return os.environ.get("CI") == "true" or os.environ.get("SHOAL_REQUIRE_NATIVE") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI a skip is a failure unless its reason starts with 'by design:'.

    Tests skip when a component (dockerd, FUSE, FFmpeg, a native build) is missing; CI installs
    all of them, so a skip there means an install step is broken, not that the test may be ignored.
    """
    outcome = yield
    report = outcome.get_result()
    if not native_required() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "by design:" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, which must provide every component: {reason}"
