"""Progress bars that suit both a terminal and a log file.

On a terminal (or in a notebook) a bar is the usual tqdm bar, redrawn in place. When the stream is not
a terminal (a sweep's log, a SLURM output file, a pipe) redraws would fill the file with thousands of
carriage-return frames, so the bar instead writes one complete line (ending in a newline, no carriage
return, no cursor movement) when it starts, at most every `LOG_INTERVAL` seconds while it runs, and
once when it closes (whatever `leave` says: a log cannot be cleared, and the last line holds the rate).
"""

from __future__ import annotations

import re
import sys

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

LOG_INTERVAL = 30.0  # seconds between two lines of a bar written to a log file
LOG_NCOLS = 100  # line width of a bar in a log file (no terminal to measure)

_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_terminal(stream) -> bool:
    """Whether `stream` is an interactive terminal (a closed or unusual stream counts as not one)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def in_notebook() -> bool:
    """Whether tqdm.auto chose its notebook widget (Jupyter): it draws in place without a terminal."""
    return any(cls.__module__ == "tqdm.notebook" for cls in auto_tqdm.__mro__)


class LineStream:
    """A file wrapper that turns tqdm's in-place redraws into whole lines.

    tqdm writes `\\r` + frame + padding for each redraw, bare `\\r`/`\\n` to clear or end a bar and ANSI
    cursor moves for nested bars; here every write that holds text becomes exactly one line and the
    rest is dropped.
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        line = _ESCAPES.sub("", str(text)).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.flush()
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def isatty(self) -> bool:
        return False


class LogBar(std_tqdm):
    """tqdm for a log file: refreshes only on its interval (a postfix or description change waits for
    the next line instead of forcing one), and always writes a last line on close."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc=None, refresh=True):
        super().set_description_str(desc, refresh=False)


def progress_bar(iterable=None, *, file=None, interval: float = LOG_INTERVAL, **kwargs):
    """A tqdm bar (same arguments as `tqdm`) configured for where it writes.

    `file` defaults to stderr, as for tqdm. On a terminal or in a notebook: tqdm.auto's bar, unchanged.
    Otherwise a `LogBar` writing whole lines through `LineStream`: `mininterval` = `maxinterval` =
    `interval` (30 s: at most one line per 30 s, and tqdm's monitor thread cannot force one sooner),
    ASCII, fixed width, and `leave=True`.
    """
    stream = sys.stderr if file is None else file
    if is_terminal(stream) or (file is None and in_notebook()):
        return auto_tqdm(iterable, file=file, **kwargs)
    kwargs.update(mininterval=interval, maxinterval=interval, leave=True, dynamic_ncols=False)
    kwargs.setdefault("ascii", True)
    kwargs.setdefault("ncols", LOG_NCOLS)
    return LogBar(iterable, file=LineStream(stream), **kwargs)
