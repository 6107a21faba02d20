"""One progress display per stage of a long job; the per-epoch and per-step lines in the stage's log.

    with stage("3/7 pre-training", total=1, log_file=out / "logs" / "3-pretrain.log"):
        pretrain_once(...)          # everything it prints goes to the log file

While a stage runs, sys.stdout and sys.stderr are routed into its log file (appended, a header line
per run): epoch and step lines, intermediate tables, library chatter. The code doing the work says
how far it is with the module functions below, which do nothing outside a stage:

    report(done, total, detail)   the position inside the current span (fit: epoch 3 of 30)
    over(items)                   splits the current span into one equal part per item (the heads)
    part(units=1)                 the next `units` of the current span as a span of its own (a run)

A stage's span is [0, total]; total=None shows an activity bar until something reports.

Display, on a terminal (rich's console.is_terminal): one rich progress bar per stage, redrawn in
place: title, bar, percent, elapsed, ETA and the latest line of the stage's log; it stays on the
screen when the stage ends, with "done in N s". Not on a terminal (CI, nohup, a pipe): plain lines,
one when the stage starts, one per further 10% at most every PLAIN_EVERY_S seconds (so a short stage
prints none), one when it ends with the time taken and the last line of its log. A failed stage
says where its log is.
"""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PLAIN_EVERY_S = 10.0   # plain mode: at most one progress line per 10% and per this many seconds
DETAIL_CHARS = 120   # the longest detail shown; a longer one loses its middle (paths are long)

_active: Stage | None = None


def _shorten(text: str, chars: int) -> str:
    """`text` in at most `chars` characters: its start and its end (where "already written" is)."""
    if len(text) <= chars:
        return text
    head = chars // 3
    return text[:head] + "…" + text[len(text) - (chars - head - 1):]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Stage:
    """The running stage: where it is (completed of total), its log file and its display."""

    def __init__(self, title: str, total: float | None, log_file: Path | None, out, plain_every: float,
                 about: str = ""):
        self.title, self.total, self.completed = title, total, 0.0
        self.spans = [(0.0, float(total) if total else 1.0)]   # (start, width) of the nested spans
        self.detail = self.last_line = ""
        self.log_file = Path(log_file) if log_file else None
        self._log = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {title}{about and ': ' + about}\n")
        self._partial = ""
        self.t0 = self._printed_at = time.perf_counter()
        self._printed_decile = 0
        self._out, self._plain_every = out, plain_every
        self._bar = self._task = None
        from rich.console import Console

        console = Console(file=out)
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.table import Column

            self._bar_width = 24 if console.width >= 140 else 10   # narrow: room for the detail
            self._bar = Progress(SpinnerColumn(finished_text="[green]✓"),
                                 TextColumn("[bold]{task.description}"), BarColumn(bar_width=self._bar_width),
                                 TaskProgressColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[detail]}", markup=False,
                                            table_column=Column(no_wrap=True, overflow="ellipsis")),
                                 console=console, transient=False, redirect_stdout=False,
                                 redirect_stderr=False, refresh_per_second=4)
            self._task = self._bar.add_task(title, total=total, detail="")
            self._bar.start()
        else:
            self._say(f"=== {title}{about and ': ' + about} ===")

    # ------------------------------------------------------------------ what the work reports
    def log(self, line: str) -> None:
        """A line for the log file (and the detail field), never for the screen."""
        self.write(line.rstrip("\n") + "\n")

    def write(self, text: str) -> int:
        if self._log is not None and not self._log.closed:
            self._log.write(text)
        lines = (self._partial + text).replace("\r", "\n").split("\n")
        self._partial = lines.pop()[-1000:]
        for line in lines:
            line = re.sub(r"\s+", " ", line).strip()
            if line:
                self.last_line = line
                self._show(detail=line)
        return len(text)

    def advance(self, n: float = 1, detail: str | None = None) -> None:
        self._set(self.completed + n, detail)

    def report(self, done: float, total: float, detail: str | None = None) -> None:
        start, width = self.spans[-1]
        if total:
            self._determinate()
            self._set(start + width * min(max(done / total, 0.0), 1.0), detail)
        elif detail is not None:
            self._show(detail=detail)

    # ------------------------------------------------------------------ display
    def _determinate(self) -> None:
        if self.total is None:   # something reports a position: the stage is [0, 1] from now on
            self.total = 1.0
            if self._bar is not None:
                self._bar.update(self._task, total=1.0)

    def _set(self, value: float, detail: str | None) -> None:
        top = self.total if self.total is not None else float("inf")
        self.completed = max(self.completed, min(value, top))   # never backwards
        self._show(detail)

    def _show(self, detail: str | None = None) -> None:
        if detail is not None:
            self.detail = _shorten(detail, DETAIL_CHARS)
        if self._bar is not None:
            shown = self.completed if self.total is None else min(self.completed, 0.999 * self.total)
            self._bar.update(self._task, completed=shown, detail=self._fit(self.detail))  # 100%: at the end
            return
        if not self.total:
            return
        decile = int(10 * self.completed / self.total + 1e-9)
        now = time.perf_counter()
        if decile > self._printed_decile and decile < 10 and now - self._printed_at >= self._plain_every:
            self._printed_decile, self._printed_at = decile, now
            elapsed = now - self.t0
            eta = elapsed / self.completed * (self.total - self.completed)
            self._say(f"  {decile * 10}% after {_clock(elapsed)}, eta {_clock(eta)}: {self.detail}")

    def _fit(self, text: str) -> str:
        """`text` cut to what is left of the terminal's line after the bar's other columns (they
        would be squeezed otherwise)."""
        return _shorten(text, max(12, self._bar.console.width - len(self.title) - 34 - self._bar_width))

    def _say(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    def close(self, error: BaseException | None) -> None:
        if self._partial.strip():
            self.write("\n")
        took = time.perf_counter() - self.t0
        self.detail = _shorten(self.last_line, DETAIL_CHARS)
        where = f" (log: {self.log_file})" if self.log_file else ""
        if error is not None:
            end = f"failed after {took:.0f} s: {type(error).__name__}{where}"
        else:
            end = f"done in {took:.0f} s" + (f": {self.detail}" if self.last_line else "")
        if self._bar is not None:
            if error is None:
                self._bar.update(self._task, total=self.total or 1.0, completed=self.total or 1.0)
            self._bar.update(self._task, detail=self._fit(end))
            self._bar.stop()
            if error is not None and where:
                self._say(f"  {end}")
        else:
            self._say(f"  {end}")
        if self._log is not None:
            self._log.write(f"--- {end}\n")
            self._log.close()


class _Route(io.TextIOBase):
    """sys.stdout / sys.stderr during stages: into the active stage's log, else to the stream it
    replaced (a logging handler that kept this object keeps working after the stage)."""

    def __init__(self, fallback):
        self.fallback = fallback

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        st = _active
        if st is None:
            return self.fallback.write(text)
        return st.write(text)

    def flush(self) -> None:
        st = _active
        if st is None:
            self.fallback.flush()
        elif st._log is not None and not st._log.closed:
            st._log.flush()

    def fileno(self) -> int:
        # the stream it replaced: code that silences a child process with dup2 on this descriptor
        # (DeepSpeed's op builder) must still silence the real one
        return self.fallback.fileno()


@contextmanager
def stage(title: str, total: float | None = None, log_file: str | Path | None = None, about: str = "",
          plain_every: float = PLAIN_EVERY_S) -> Iterator[Stage]:
    """Run the block as one stage: one progress display on sys.stdout, the block's output in
    `log_file`. `title` names it on the bar; `about` adds a description to the plain header and the
    log. Inside another stage it is a part of that one (no display of its own)."""
    global _active
    if _active is not None:
        with part():
            yield _active
        return
    out, err = sys.stdout, sys.stderr
    st = Stage(title, total, Path(log_file) if log_file else None, out, plain_every, about)
    _active = st
    sys.stdout, sys.stderr = _Route(out), _Route(err)
    error = None
    try:
        yield st
    except BaseException as e:
        error = e
        raise
    finally:
        sys.stdout, sys.stderr = out, err
        _active = None
        st.close(error)


def active() -> Stage | None:
    return _active


def report(done: float, total: float, detail: str | None = None) -> None:
    """Inside a stage: `done` of `total` of the current span (and a detail line); else nothing."""
    if _active is not None:
        _active.report(done, total, detail)


def advance(n: float = 1, detail: str | None = None) -> None:
    """Inside a stage: `n` more units of the stage's total; else nothing."""
    if _active is not None:
        _active.advance(n, detail)


@contextmanager
def part(units: float = 1.0) -> Iterator[None]:
    """The next `units` of the current span (from where the stage is now) as a span of its own,
    complete when the block ends (also when it skipped its work). Outside a stage: nothing."""
    st = _active
    if st is None:
        yield
        return
    st._determinate()
    parent_start, parent_width = st.spans[-1]
    top = parent_start + parent_width
    start = min(st.completed, top)
    width = min(units * (parent_width if len(st.spans) > 1 else 1.0), top - start)
    st.spans.append((start, width))
    try:
        yield
    finally:
        if st.spans and st.spans[-1] == (start, width):
            st.spans.pop()
        if _active is st:
            st._set(start + width, None)


def over(items: Iterable) -> Iterator:
    """Each item of `items` with an equal share of the current span (its part complete when the
    next item is asked for). Outside a stage: the items."""
    items = list(items)
    st = _active
    if st is None or not items:
        yield from items
        return
    st._determinate()
    start, width = st.spans[-1]
    for i, item in enumerate(items):
        span = (start + width * i / len(items), width / len(items))
        st.spans.append(span)
        try:
            yield item
        finally:
            if st.spans and st.spans[-1] == span:
                st.spans.pop()
            if _active is st:
                st._set(span[0] + span[1], None)
