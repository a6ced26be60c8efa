"""What a person sees: the package's log lines, as plain lines on standard output."""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = "jointseg"


class _CurrentStdout(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stdout`` is at the time of the record."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send the package's records at ``level`` and above to standard output, message only
    (idempotent: nothing is added while a console handler is there, ours or the one
    ``tqdm.contrib.logging.logging_redirect_tqdm`` puts in its place)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level)
    if not any(_is_console(h) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _is_console(handler: logging.Handler) -> bool:
    """A stream handler on stdout or stderr: ours, or tqdm's redirect handler."""
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
