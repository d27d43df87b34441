"""The one progress bar of every command, and the one-line summary it leaves behind.

A bar is steady: its total is known before the first file is hashed (paths are expanded, i.e.
the walk is counted, first), its rate is the average over the whole run (no jumping ETA), and
when the total is not known yet it is a counter.  At the end the bar is replaced by one line:
``telfhash: 63,839 files, 12,000 hashed, 51,839 without telfhash (51,000 not ELF, 839 empty) in
58.1 s``.  Nothing is drawn when stderr is not a terminal unless asked for.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO

# Below this many files a bar is not worth drawing (unless asked for).
PROGRESS_MIN_FILES = 50

_REASON_WORDS = {
    "not_found": "not found",
    "unreadable": "unreadable",
    "directory": "directories",
    "not_regular": "not regular files",
    "empty": "empty",
    "too_large": "too large",
    "not_elf": "not ELF",
    "corrupt": "corrupt",
    "malformed": "malformed",
    "no_symbols": "no symbols",
    "no_calls": "no calls",
    "unsupported_arch": "unsupported CPU",
    "too_few_symbols": "too few symbols",
    "no_code": "no code",
    "internal": "internal errors",
}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 group"``, ``"2 groups"``, ``"0 groups"`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def reason_words(code: str) -> str:
    """Words for a :class:`~telfhash_core.result.Reason` code, for people."""
    return _REASON_WORDS.get(code, code.replace("_", " "))


def summary_line(files: int, hashed: int, reasons: Counter | dict, seconds: float, prog: str = "telfhash") -> str:
    """``"prog: N files, H hashed, W without telfhash (by reason) in S s"``."""
    without = files - hashed
    text = f"{prog}: {plural(files, 'file')}, {hashed:,} hashed"
    if without:
        parts = ", ".join(
            f"{n:,} {reason_words(k)}" for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        text += f", {without:,} without telfhash" + (f" ({parts})" if parts else "")
    return text + f" in {seconds:.1f} s"


def _outcome(item: Any) -> tuple[bool, str | None]:
    """(has a telfhash, reason code) of a Result or a result/batch row dict."""
    if isinstance(item, dict):
        reason = item.get("reason")
        return bool(item.get("telfhash")) and reason is None, reason if isinstance(reason, str) else None
    reason = getattr(item, "reason", None)
    return getattr(item, "telfhash", None) is not None, getattr(reason, "value", reason)


class Progress:
    """A progress bar on stderr with a summary line when it closes.

    ``enabled``: True (always), False (never) or None (when stderr is a terminal and there are
    at least ``min_total`` items; tqdm is not even imported for fewer).  With ``total=None`` the
    bar counts the files a walk finds (:meth:`found`) until :meth:`set_total` makes it a bar.
    ``update(n, item)`` counts an outcome (a Result or a row dict) for the summary; ``update(n)``
    only advances the bar.  Use as a context manager.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        enabled: bool | None = None,
        desc: str | None = None,
        prog: str = "telfhash",
        min_total: int = PROGRESS_MIN_FILES,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.prog = prog
        self.desc = desc
        self.min_total = min_total
        self.total = total
        self.seen = 0  # files found by the walk so far (before the total is known)
        self.done = 0
        self.hashed = 0
        self.reasons: Counter = Counter()
        self.t0 = time.perf_counter()
        self._auto = enabled is None
        self._allowed = _isatty(self.stream) if enabled is None else bool(enabled)
        self._bar: Any = None
        self._shown = False
        self.was_shown = False  # a bar appeared at some point (its summary line then says it all)
        self._start()

    def _start(self) -> None:
        if self._bar is not None or not self._allowed or self.total == 0:
            return
        count = self.total if self.total is not None else self.seen
        if self._auto and count < self.min_total:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=self.total,
            initial=self.seen if self.total is None else self.done,
            unit="file",
            file=self.stream,
            dynamic_ncols=True,
            leave=False,
            smoothing=0,  # the average rate of the whole run: a steady ETA
            mininterval=0.25,
            desc=self.desc if self.total is not None else "finding files",
        )
        self._shown = self.was_shown = True

    @property
    def enabled(self) -> bool:
        """A bar is on the screen."""
        return self._bar is not None

    def found(self, _path: object = None) -> None:
        """The walk found one more file (the total is not known yet): a counter, not a bar."""
        self.seen += 1
        if self._bar is None:
            if self.seen >= self.min_total:
                self._start()
        else:
            self._bar.update(1)

    def set_total(self, total: int) -> None:
        """The walk is counted: from here on a bar of ``total`` files."""
        self.total = total
        if self._bar is not None:
            self._bar.set_description_str(self.desc or "", refresh=False)
            self._bar.reset(total=total)
            if total == 0:
                self.close(summary=False)
        else:
            self._start()

    def write(self, message: str) -> None:
        """A line on the stream, above the bar when one is shown."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream)

    def update(self, n: int = 1, item: Any = None) -> None:
        self.done += n
        if item is not None:
            ok, reason = _outcome(item)
            if ok:
                self.hashed += 1
            elif reason:
                self.reasons[reason] += 1
        if self._bar is not None:
            self._bar.update(n)

    def summary(self) -> str:
        return summary_line(self.done, self.hashed, self.reasons, time.perf_counter() - self.t0, self.prog)

    def close(self, *, summary: bool = True) -> None:
        """Remove the bar; when one was shown, leave the summary line in its place."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._shown and summary:
            print(self.summary(), file=self.stream, flush=True)
        self._shown = False
        self._allowed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
