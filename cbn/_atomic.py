"""Ctrl-C and the calls that change state.

Python raises a pending KeyboardInterrupt when a C call returns (and at other points between
bytecodes), so a call whose changes are several Python statements -- a chunk loop over a
float16 array written in place, a kernel followed by the running-statistic update, a result
copied back from a temporary -- could stop between them and leave them half done.  The fast
paths do everything in one C call and need nothing; the other paths run their changes inside
``deferred_interrupt``, which holds a SIGINT back until the block ends.  It costs two
``signal.signal`` calls (~9 us here), so it guards only the slow paths, and there only the
calls that change the caller's arrays.
"""

import signal
import threading

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
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._recorder = _Recorder()
            signal.signal(signal.SIGINT, self._recorder)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._recorder is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self._recorder.pending:  # the block's own error, if any, as its cause
                raise KeyboardInterrupt from exc
        return False
