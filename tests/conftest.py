"""One suite, two implementations: every test that takes `impl` runs against the
compiled core and against the pure-Python reference model. Each is imported
directly, so a missing build fails loudly instead of testing the fallback twice."""

import importlib

import pytest

IMPLEMENTATIONS = ("core", "reference")


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """The implementation module: ptreclaim._core or ptreclaim._reference."""
    return importlib.import_module(f"ptreclaim._{request.param}")


@pytest.fixture
def MM(impl):
    """The MM class of the implementation under test."""
    return impl.MM
