"""Retrying transient faults (storage, registry, API server unreachable) for a stated time budget.

A short outage (a MinIO or MLflow restart, a node's network blip) must not end a run, so every client of
a remote service retries with exponential backoff until the budget is spent, then raises
:class:`ServiceUnreachableError` naming the service and how long it was tried. The budget is one setting
for the whole package:

``SAM2_RETRY_BUDGET_S``
    Seconds a request to an unreachable service is retried before giving up (default 300: a pod or
    server restart fits in it). ``0`` tries once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

logger = logging.getLogger(__name__)

RETRY_BUDGET_ENV = "SAM2_RETRY_BUDGET_S"
DEFAULT_RETRY_BUDGET_S = 300.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 15.0
"""The longest wait between two attempts, so a service that comes back is noticed within this."""

T = TypeVar("T")


class ServiceUnreachableError(Exception):
    """A remote service stayed unreachable for the whole retry budget (a transient fault: retry later)."""


def retry_budget_s(environ: Mapping[str, str] | None = None) -> float:
    """The retry budget in seconds from ``SAM2_RETRY_BUDGET_S`` (default 300).

    Raises:
        ValueError: the variable is not a number >= 0 (the message names it).
    """
    raw = (os.environ if environ is None else environ).get(RETRY_BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{RETRY_BUDGET_ENV}={raw!r} is not a number of seconds >= 0; unset it for 300")
    return value


class Backoff:
    """Waits between attempts: doubling from ``first_s`` up to ``max_s``, never past the budget's end.

    ``next_wait()`` returns the seconds to sleep before the next attempt, or None when the budget is spent.
    """

    def __init__(
        self,
        budget_s: float | None = None,
        first_s: float = FIRST_BACKOFF_S,
        max_s: float = MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = retry_budget_s() if budget_s is None else max(0.0, budget_s)
        self._delay = first_s
        self._max = max_s
        self._clock = clock
        self.started = clock()
        self.attempts = 0

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def next_wait(self) -> float | None:
        self.attempts += 1
        left = self.budget_s - self.elapsed_s
        if left <= 0:
            return None
        wait = min(self._delay, self._max, left)
        self._delay *= 2
        return wait


def call_with_retry(
    fn: Callable[[], T],
    *,
    service: str,
    what: str,
    is_transient: Callable[[BaseException], bool],
    budget_s: float | None = None,
    hint: str = "",
) -> T:
    """Run ``fn``; on a transient error retry with backoff until the budget is spent.

    Non-transient errors propagate at once. Raises :class:`ServiceUnreachableError` naming ``service``,
    ``what`` was being done, the seconds tried and the last error, plus ``hint`` (what to check).
    """
    backoff = Backoff(budget_s)
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            wait = backoff.next_wait()
            if wait is None:
                raise ServiceUnreachableError(
                    f"{service} unreachable while {what}: tried {backoff.attempts} times for "
                    f"{backoff.elapsed_s:.0f} s ({RETRY_BUDGET_ENV}={backoff.budget_s:g}; last: "
                    f"{type(err).__name__}: {_first_line(err)}){'. ' + hint if hint else ''}"
                ) from None
            logger.warning(
                "%s unreachable while %s (%s); retrying in %.1f s", service, what, type(err).__name__, wait
            )
            time.sleep(wait)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def wait_for_http_service(
    url: str,
    *,
    service: str,
    what: str,
    health_path: str = "/health",
    hint: str = "",
    budget_s: float | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Block until ``url + health_path`` answers HTTP at all (any status), retrying a refused or dropped
    connection and 5xx answers for the retry budget.

    Raises:
        ServiceUnreachableError: it did not answer within the budget (naming ``service``, ``url``, the
            attempts and seconds).
    """
    import urllib.error
    import urllib.request

    def probe() -> None:
        try:
            with urllib.request.urlopen(url.rstrip("/") + health_path, timeout=timeout_s):
                return
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise
            return  # it answers (a 401/403/404 is the caller's to interpret)

    def transient(err: BaseException) -> bool:
        if isinstance(err, urllib.error.HTTPError):
            return err.code >= 500
        return isinstance(err, (urllib.error.URLError, OSError, TimeoutError))

    call_with_retry(
        probe, service=f"{service} {url}", what=what, is_transient=transient, budget_s=budget_s, hint=hint
    )
