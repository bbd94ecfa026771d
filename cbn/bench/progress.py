"""The progress bar drawn on stderr while the benchmark runs."""

import sys
import time


class ProgressBar:
    r"""A one-line text progress bar on a stream (stderr), redrawn with ``\r``.

    Drawn only when the stream is a terminal; :meth:`close` always writes a final line.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file-like, default ``sys.stderr``
    width : int, default 30
        Characters of the bar.
    """

    def __init__(self, total, stream=None, width=30):
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.perf_counter()
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self.done = 0

    def __call__(self, done, total, label):
        """Draw the bar at step ``done`` of ``total`` with ``label`` (the step just done)."""
        self.done = done
        if not self.live:
            return
        filled = int(self.width * done / max(1, total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"[{bar}] {done}/{total} {elapsed:5.1f}s {label}"
        self.stream.write("\r" + line[:110].ljust(110))
        self.stream.flush()

    def close(self):
        """End the bar with a final line: steps done and elapsed time."""
        elapsed = time.perf_counter() - self.start
        prefix = "\r" + " " * 110 + "\r" if self.live else ""
        self.stream.write(f"{prefix}bench: {self.done}/{self.total} op x case timings in "
                          f"{elapsed:.1f} s\n")
        self.stream.flush()
