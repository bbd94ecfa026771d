"""asv benchmarks: batch norm with a fused ReLU against batch norm followed by a separate ReLU.

``fused`` passes ``activation="relu"`` (the ReLU and, in backward, its mask are applied inside
cbn's passes); ``separate`` runs the plain op and then the ReLU (or its mask) as one NumPy
pass, in place where possible -- what a user would write without the fused option.  Both use
preallocated outputs, so the difference is the extra pass over the data.
"""

import numpy as np

import cbn

SHAPES = {
    "32x64x56x56": ((32, 64, 56, 56), 1),
    "4096x1024": ((4096, 1024), 1),
    "32x56x56x64-nhwc": ((32, 56, 56, 64), -1),
}


class ReluFusion:
    """Fused versus separate ReLU for inference, training forward and backward."""

    params = (list(SHAPES), ["float32"], ["fused", "separate"])
    param_names = ["shape", "dtype", "mode"]

    def setup(self, shape, dtype, mode):
        """Random inputs, statistics and preallocated outputs."""
        dims, self.axis = SHAPES[shape]
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
        self.dy = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
        C = dims[self.axis]
        self.rm, self.rv = np.zeros(C), np.ones(C)
        self.w, self.b = np.ones(C), np.zeros(C)
        self.out = np.empty_like(self.x)
        self.tmp = np.empty_like(self.x)
        f = cbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, activation="relu")
        self.mean, self.invstd, self.y = f.mean, f.invstd, f.out

    def time_inference(self, shape, dtype, mode):
        """Evaluation pass + ReLU."""
        if mode == "fused":
            cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis,
                                     out=self.out, activation="relu")
        else:
            cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis,
                                     out=self.out)
            np.maximum(self.out, 0, out=self.out)

    def time_forward(self, shape, dtype, mode):
        """Training forward + ReLU."""
        if mode == "fused":
            cbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, out=self.out,
                                   activation="relu")
        else:
            cbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, out=self.out)
            np.maximum(self.out, 0, out=self.out)

    def time_backward(self, shape, dtype, mode):
        """ReLU backward + batch-norm backward."""
        if mode == "fused":
            cbn.batch_norm_backward(self.dy, self.x, self.mean, self.invstd, self.w,
                                    axis=self.axis, out=self.out, activation="relu", y=self.y)
        else:
            np.multiply(self.dy, self.y > 0, out=self.tmp)
            cbn.batch_norm_backward(self.tmp, self.x, self.mean, self.invstd, self.w,
                                    axis=self.axis, out=self.out)
