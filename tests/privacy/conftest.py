"""Fixtures for the privacy tests."""

import pytest

from dpdiffusion.privacy import noise


@pytest.fixture(autouse=True)
def _silence_insecure_prng_warning(monkeypatch):
    """The one-time 'torch PRNG is not a CSPRNG' warning is tested explicitly; silence it elsewhere."""
    monkeypatch.setattr(noise, "_INSECURE_PRNG_WARNED", True)
