"""Logging, configured once at process start: structlog key-value events, JSON in production.

Every process also appends its log (JSON lines) to DATA_DIR/logs/metrify.log, so that an
unexpected error can point the user at the full story instead of printing a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog
from structlog.typing import Processor


def configure_logging(level: str, fmt: str, data_dir: Path) -> Path:
    """Set up structlog and the standard library's logging; return the log file's path.
    Calling it again replaces the handlers (a test, or a second command in one process)."""
    log_dir = data_dir / "logs"
    log_file = log_dir / "metrify.log"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]  # the traceback as text
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    foreign: list[Processor] = [*shared, structlog.stdlib.ExtraAdder()]  # logging's extra={...} fields
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
            foreign_pre_chain=foreign,
        )
    )
    root = logging.getLogger()
    for handler in root.handlers:
        handler.close()
    root.handlers = [console]
    root.setLevel(level.upper())
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
    except OSError:
        return log_file
    to_file.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # no frame's local variables: they hold passwords, tokens and the JWT secret
                structlog.processors.ExceptionRenderer(
                    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                ),
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=foreign,
        )
    )
    to_file.setLevel(logging.DEBUG)
    root.addHandler(to_file)
    for noisy in ("alembic", "sqlalchemy", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return log_file
