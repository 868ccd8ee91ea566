import pytest

from patseg.demo.backend import builtin_backend


@pytest.fixture(scope="module")
def backend():
    """The built-in SAN-tiny and PAT-tiny, loaded once per test module."""
    return builtin_backend("cpu")
