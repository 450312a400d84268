"""Fixtures for tests against live servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.live import running_gateway


@pytest.fixture()
def gateway(live_stack: dict[str, str], request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A real gateway process for this test's own model name, on a free port."""
    with running_gateway(live_stack, f"rollout-{request.node.name}"[:50].replace("_", "-")) as gw:
        yield gw
