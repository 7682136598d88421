"""Errors raised by the client: each carries the server's error code."""

from __future__ import annotations

from typing import Optional


class EngramError(Exception):
    """The server refused a request (4xx/5xx), or could not be reached.

    ``status`` is the HTTP status (``None`` when there was no answer) and
    ``code`` the server's error code (``invalid_argument``, ``not_found``,
    ``unauthenticated``, ``permission_denied``, ``unavailable``, ...; see
    docs/api.md), ``message`` its explanation.
    """

    def __init__(self, status: Optional[int], code: str, message: str):
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class JobFailed(EngramError):
    """A job the client waited for ended ``failed`` or ``cancelled``."""

    def __init__(self, job: "object", message: str):
        super().__init__(None, "job_failed", message)
        self.job = job
