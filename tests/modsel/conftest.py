"""Fixtures shared by the modsel tests: the seed network and a 7,000-wide ModuleList."""

from __future__ import annotations

import pytest
from torch import nn

from .models import Network, network, wide

WIDE = 7000


@pytest.fixture(scope="session")
def net() -> Network:
    return network()


@pytest.fixture(scope="session")
def big() -> nn.ModuleList:
    return wide(WIDE)
