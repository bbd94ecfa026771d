"""asv benchmarks: batch norm with fused epilogues against batch norm followed by separate ops.

``fused`` passes ``activation=`` (and ``residual=``) to cbn, which applies them in its own
passes; ``separate`` runs the plain op and then the add and the activation (or their
gradients) as NumPy passes, in place where possible -- what a user would write without the
fused option.  Both use preallocated outputs, so the difference is the extra passes over the
data.  ``ReluFusion`` is the in-register ReLU; ``ResidualFusion`` the residual add + ReLU of a
ResNet block and SiLU, through the post-operation stage.
"""

import numpy as np

import cbn

SHAPES = {
    "32x64x56x56": ((32, 64, 56, 56), 1),
    "4096x1024": ((4096, 1024), 1),
    "32x56x56x64-nhwc": ((32, 56, 56, 64), -1),
}


def _inputs(bench, shape, dtype):
    """The inputs every fusion benchmark shares, set on ``bench``: x, dy, the channel axis,
    running statistics, affine parameters and a preallocated output."""
    dims, bench.axis = SHAPES[shape]
    rng = np.random.default_rng(0)
    bench.x = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
    bench.dy = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
    C = dims[bench.axis]
    bench.rm, bench.rv = np.zeros(C), np.ones(C)
    bench.w, bench.b = np.ones(C), np.zeros(C)
    bench.out = np.empty_like(bench.x)


class ReluFusion:
    """Fused versus separate ReLU for inference, training forward and backward."""

    params = (list(SHAPES), ["float32"], ["fused", "separate"])
    param_names = ["shape", "dtype", "mode"]

    def setup(self, shape, dtype, mode):
        """Random inputs, statistics and preallocated outputs."""
        _inputs(self, shape, dtype)
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


def _silu(a, out):
    """a * sigmoid(a) into out, in NumPy passes (out may be a)."""
    np.negative(a, out=out)
    np.exp(out, out=out)
    out += 1
    np.divide(a, out, out=out)


class ResidualFusion:
    """relu(bn(x) + residual) and silu(bn(x)), fused versus separate."""

    params = (list(SHAPES), ["float32"], ["fused", "separate"])
    param_names = ["shape", "dtype", "mode"]

    def setup(self, shape, dtype, mode):
        """Random inputs and residual, statistics and preallocated outputs."""
        _inputs(self, shape, dtype)
        self.r = np.random.default_rng(1).standard_normal(self.x.shape, dtype=np.float32).astype(
            dtype)
        self.dres = np.empty_like(self.x)
        f = cbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, activation="relu",
                                   residual=self.r)
        self.mean, self.invstd, self.y = f.mean, f.invstd, f.out

    def time_inference_add_relu(self, shape, dtype, mode):
        """Evaluation pass + residual + ReLU."""
        if mode == "fused":
            cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis,
                                     out=self.out, activation="relu", residual=self.r)
        else:
            cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis,
                                     out=self.out)
            self.out += self.r
            np.maximum(self.out, 0, out=self.out)

    def time_forward_add_relu(self, shape, dtype, mode):
        """Training forward + residual + ReLU."""
        if mode == "fused":
            cbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, out=self.out,
                                   activation="relu", residual=self.r)
        else:
            cbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, out=self.out)
            self.out += self.r
            np.maximum(self.out, 0, out=self.out)

    def time_backward_add_relu(self, shape, dtype, mode):
        """Backward of relu(bn(x) + residual): dx, the parameter gradients and dresidual."""
        if mode == "fused":
            cbn.batch_norm_backward(self.dy, self.x, self.mean, self.invstd, self.w,
                                    axis=self.axis, out=self.out, activation="relu", y=self.y,
                                    residual=self.r, dresidual_out=self.dres)
        else:
            np.multiply(self.dy, self.y > 0, out=self.dres)
            cbn.batch_norm_backward(self.dres, self.x, self.mean, self.invstd, self.w,
                                    axis=self.axis, out=self.out)

    def time_inference_silu(self, shape, dtype, mode):
        """Evaluation pass + SiLU."""
        if mode == "fused":
            cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis,
                                     out=self.out, activation="silu")
        else:
            cbn.batch_norm_inference(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis,
                                     out=self.out)
            _silu(self.out, self.dres)
