"""Ctrl-C and the calls that change state.

Python raises a pending KeyboardInterrupt when a C call returns (and at other points between
bytecodes), so a call whose changes are several Python statements -- a kernel followed by
the running-statistic update, a result copied back from a temporary, two outputs of a fused
backward -- could stop between them and leave them half done.  The fast
paths do everything in one C call and need nothing; the other paths run their changes inside
``deferred_interrupt``, which holds a SIGINT back until the block ends.  It costs two handler
swaps through the C module behind :mod:`signal` (``_signal``; ``signal.signal`` converts
every number to an enum and cost ~9 us a pair here, ``_signal.signal`` ~0.5 us), and guards
only the calls that change the caller's arrays.
"""

import threading

try:  # the C module that signal wraps, without its enum conversions
    import _signal as _sig
except ImportError:  # pragma: no cover - not CPython
    import signal as _sig

__all__ = ["deferred_interrupt"]


class _Recorder:
    """A SIGINT handler that only remembers the signal."""

    __slots__ = ("pending",)

    def __init__(self):
        self.pending = False

    def __call__(self, signum, frame):
        self.pending = True


class deferred_interrupt:
    """Context manager: a SIGINT received in the block raises KeyboardInterrupt at its end.

    Active only when ``active`` is true, in the main thread (where Python runs signal handlers)
    while SIGINT has Python's default handler; otherwise (a handler of the caller's own,
    nested use) a no-op.
    """

    __slots__ = ("_recorder", "_active")

    def __init__(self, active=True):
        self._active = active

    def __enter__(self):
        self._recorder = None
        if (self._active and threading.current_thread() is threading.main_thread()
                and _sig.getsignal(_sig.SIGINT) is _sig.default_int_handler):
            self._recorder = _Recorder()
            _sig.signal(_sig.SIGINT, self._recorder)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._recorder is not None:
            _sig.signal(_sig.SIGINT, _sig.default_int_handler)
            if self._recorder.pending:  # the block's own error, if any, as its cause
                raise KeyboardInterrupt from exc
        return False
