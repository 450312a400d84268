"""The one task decorator every Tollgate task uses, with the project's shared defaults.

- No result caching: tasks act on servers and files whose state a cache key cannot see.
- Retries only where a repeat is harmless: `@tollgate_task(idempotent_io=True)` for reads (and writes keyed so
  that a second attempt overwrites the first). A call that creates something (an MLflow run, a registry
  transition, a ledger line) is never retried, so a flaky network cannot create it twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from prefect import task
from prefect.cache_policies import NO_CACHE

F = TypeVar("F", bound=Callable[..., Any])

IO_RETRIES = 2
IO_RETRY_DELAY_S = 2


@overload
def tollgate_task(fn: F) -> F: ...
@overload
def tollgate_task(
    *, idempotent_io: bool = False, retries: int = IO_RETRIES, retry_delay_s: float = IO_RETRY_DELAY_S
) -> Callable[[F], F]: ...


def tollgate_task(
    fn: Any = None, *, idempotent_io: bool = False, retries: int = IO_RETRIES, retry_delay_s: float = IO_RETRY_DELAY_S
) -> Any:
    """`@task` named after the function, uncached, retried (`retries` times) only when `idempotent_io`."""

    def wrap(f: Any) -> Any:
        return task(
            f,
            name=f.__name__,
            cache_policy=NO_CACHE,
            retries=retries if idempotent_io else 0,
            retry_delay_seconds=retry_delay_s if idempotent_io else 0,
        )

    return wrap(fn) if fn is not None else wrap


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow or task run, else the `tollgate` logger (unit tests, the CLI)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tollgate")


class StepTimes(dict[str, float]):
    """Seconds per flow step, in the order the steps ran (logged as `timing_<step>_s` on the MLflow run)."""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block as step `name` (recorded also when it raises, so a failed run shows where it stopped)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(time.perf_counter() - start, 3)
