"""The one bounded-window executor: work handed to a pool a few units ahead, never all at once.

Hashing a million paths must not create a million futures (memory) nor hold results back behind
one slow file.  :func:`bounded` keeps at most ``window`` units in flight and yields each as it
finishes; it serves a process pool (``concurrent.futures``) and a Dask client alike.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def worker_init() -> None:
    """Initialiser of worker processes: Ctrl-C is for the parent to report, not for every worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_futures(pending: set) -> set:
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    return done


def bounded(
    units: Iterable[T],
    submit: Callable[[T], Any],
    window: int,
    *,
    wait_any: Callable[[set], set] | None = None,
) -> Iterator[tuple[T, Any]]:
    """``(unit, finished future)`` for every unit, in the order they finish.

    ``submit(unit)`` returns a future; at most ``window`` are pending at a time.  ``wait_any``
    blocks until at least one of the pending futures is done and returns the done ones (default:
    ``concurrent.futures.wait``; pass ``lambda p: distributed.wait(p, return_when="FIRST_COMPLETED").done``
    for Dask).  The caller reads ``future.result()`` (which may raise: a worker died).
    """
    wait_any = wait_any or _wait_futures
    window = max(1, int(window))
    it = iter(units)
    pending: dict[Any, T] = {}
    for unit in it:
        pending[submit(unit)] = unit
        if len(pending) >= window:
            break
    while pending:
        for fut in wait_any(set(pending)):
            unit = pending.pop(fut)
            yield unit, fut
            nxt = next(it, None)
            if nxt is not None:
                pending[submit(nxt)] = nxt
