"""Fixtures of the serve tests: serve.http's app over a stand-in model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import StandIn, stand_in_api


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, StandIn]]:
    """serve.http on a real uvicorn on 127.0.0.1 over a StandIn: its URL and the stand-in."""
    with stand_in_api() as served:
        yield served
