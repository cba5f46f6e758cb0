"""What a run shows on the terminal: progress bars, and library noise a user cannot act on, silenced.

Progress bars leave no line behind (nested bars then never leave ``ESC[A`` garbage) and stay off
when stderr is not a terminal (logs, CI, pytest) or ``TQDM_DISABLE`` is set. tqdm reads its
``TQDM_*`` variables once, when it is imported, so the variable is read here on every call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

# (logger, message start): records the user can do nothing about, emitted where our runs call
# into libraries. Each is matched at its source logger, so nothing else is hidden.
KNOWN_NOISE = (
    # torch.compile of RMSprop.step (after 500 steps): the step's profiling hook is skipped.
    ("torch._dynamo.variables.ctx_manager", "Profiler record function"),
    ("torch._dynamo.variables.torch", "Profiler function"),
    # The compiler probes for CUDA on a CPU-only machine.
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    # Determined probes for AMD GPUs on every machine.
    ("determined", "rocm-smi not found"),
)

# (logger, message start): Determined's local bookkeeping, logged at INFO every 100 batches and at
# each validation; shown only at DEBUG level.
BOOKKEEPING = (
    ("determined.core", "report_progress"),
    ("determined.core", "upload_tensorboard_files"),
    ("determined.core", "status: "),
)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no", "off"}


def progress_enabled() -> bool:
    """Whether bars are shown: stderr is a terminal and TQDM_DISABLE is not set."""
    return sys.stderr.isatty() and not env_flag("TQDM_DISABLE")


def progress(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """A tqdm bar that clears itself when done and is off when ``progress_enabled()`` is false."""
    options.setdefault("leave", False)
    options["disable"] = bool(options.get("disable")) or not progress_enabled()
    return tqdm(iterable, **options)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


class _ToDebug(logging.Filter):
    """Records starting with ``starts`` become DEBUG records: shown only when their logger is
    enabled for DEBUG."""

    def __init__(self, logger: logging.Logger, starts: tuple[str, ...]):
        super().__init__()
        self.logger, self.starts = logger, starts

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.starts):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return self.logger.isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def known_noise_silenced() -> Iterator[None]:
    """Drop ``KNOWN_NOISE`` and demote ``BOOKKEEPING`` to DEBUG for the duration of one of our
    runs; library logging is restored after."""
    filters: list[tuple[str, logging.Filter]] = []
    for name in sorted({name for name, _ in KNOWN_NOISE}):
        drop = _DropMessages(tuple(start for source, start in KNOWN_NOISE if source == name))
        logging.getLogger(name).addFilter(drop)
        filters.append((name, drop))
    for name in sorted({name for name, _ in BOOKKEEPING}):
        demote = _ToDebug(logging.getLogger(name), tuple(start for source, start in BOOKKEEPING if source == name))
        logging.getLogger(name).addFilter(demote)
        filters.append((name, demote))
    try:
        yield
    finally:
        for name, drop in filters:
            logging.getLogger(name).removeFilter(drop)
