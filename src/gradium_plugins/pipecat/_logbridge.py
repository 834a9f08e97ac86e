"""Show the core's stdlib log records in loguru, which is what Pipecat applications configure."""

from __future__ import annotations

import logging

from loguru import logger  # type: ignore[import-not-found,unused-ignore]


class _ToLoguru(logging.Handler):
    """Forwards ``gradium_plugins`` records to loguru at the same level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def route_core_logs_to_loguru() -> None:
    """Forward the core's logs (reconnects, renewals, warnings) to loguru, once.

    Skipped when the application configured stdlib logging itself (the root logger has
    handlers), so records are never shown twice.
    """
    core = logging.getLogger("gradium_plugins")
    if logging.getLogger().handlers or any(isinstance(h, _ToLoguru) for h in core.handlers):
        return
    core.addHandler(_ToLoguru())
    if core.level == logging.NOTSET:
        core.setLevel(logging.INFO)
