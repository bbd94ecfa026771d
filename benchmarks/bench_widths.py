"""asv benchmarks: channels-last (NHWC-style) batch norm across channel counts.

The element-wise and reduction kernels of the channels-last layout change strategy with the row
width (register tiles for narrow rows, column tiles with prefetch for wide ones), so this sweep
keeps the bytes fixed (~25.7 MB of float32, the size of the main NHWC case) and varies C from
64 to 2048 -- the widths of ResNet-style networks.  cbn only, with a preallocated output; the
``copy`` rows time a plain NumPy copy of the same bytes for a same-run reference.
"""

import numpy as np

import cbn

BYTES = 32 * 56 * 56 * 64 * 4
WIDTHS = [64, 128, 256, 512, 1024, 2048]


class ChannelsLastWidths:
    """Forward, backward and inference on (BYTES / 4 / C, C) float32 arrays, axis=-1."""

    params = (WIDTHS, [1, 2])
    param_names = ["channels", "num_threads"]
    repeat = (2, 5, 4.0)
    warmup_time = 0.05

    def setup(self, channels, num_threads):
        """Random inputs, saved statistics and a preallocated output."""
        rows = BYTES // 4 // channels
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((rows, channels), dtype=np.float32)
        self.dy = rng.standard_normal((rows, channels), dtype=np.float32)
        self.w = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        self.b = rng.standard_normal(channels).astype(np.float32)
        self.rm, self.rv = np.zeros(channels, np.float32), np.ones(channels, np.float32)
        self.out = np.empty_like(self.x)
        _, self.mean, self.invstd = cbn.batch_norm_forward(self.x, self.w, self.b, axis=-1)
        self.nt = num_threads
        self.time_inference(channels, num_threads)  # warm up: page in the output, start threads

    def time_forward(self, channels, num_threads):
        """Training forward pass."""
        cbn.batch_norm_forward(self.x, self.w, self.b, axis=-1, out=self.out,
                               num_threads=self.nt)

    def time_backward(self, channels, num_threads):
        """Backward pass: dx, dweight and dbias."""
        cbn.batch_norm_backward(self.dy, self.x, self.mean, self.invstd, self.w, axis=-1,
                                out=self.out, num_threads=self.nt)

    def time_inference(self, channels, num_threads):
        """Inference with the running statistics."""
        cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=-1,
                                 out=self.out, num_threads=self.nt)

    def time_copy(self, channels, num_threads):
        """A plain NumPy copy of the same bytes (single-threaded reference)."""
        np.copyto(self.out, self.x)
