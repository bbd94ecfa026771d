"""The records of a run, :class:`Result` (one op on one case) and :class:`ScalingResult` (one
op on one case at 1 and at n threads), with their ratios and their JSON form."""

from dataclasses import dataclass, field

from .cases import Case
from .timing import NOISE_THRESHOLD


def _case_fields(op, case):
    """The JSON fields naming an (op, case) pair."""
    return {"op": op, "shape": list(case.shape), "dtype": case.dtype, "axis": case.axis}


@dataclass
class Result:
    """The timings of one op on one case.

    Attributes
    ----------
    op : str
        ``"forward"``, ``"backward"`` or ``"inference"``.
    case : Case
        The input configuration.
    times : dict
        Seconds per call for each implementation in :data:`IMPLS`; None when not measured
        (torch missing or unable to take the layout).
    spreads : dict
        Median over best time of each measured implementation (see :func:`spread`).
    """

    op: str
    case: Case
    times: dict = field(default_factory=dict)
    spreads: dict = field(default_factory=dict)

    @property
    def noisy(self):
        """True when some implementation's rounds varied more than :data:`NOISE_THRESHOLD`."""
        return any(s > NOISE_THRESHOLD for s in self.spreads.values())

    def speedup(self, impl):
        """How many times faster cbn is than ``impl`` (None if either time is missing).

        Parameters
        ----------
        impl : str
            ``"numpy"`` or a peer (``"torch"``, ``"numba"``, ``"onnxruntime"``).

        Returns
        -------
        float or None
        """
        other, mine = self.times.get(impl), self.times.get("cbn")
        if other is None or mine is None:
            return None
        return other / mine

    @property
    def floor_ratio(self):
        """The cbn time over the floor time (1.0 means at memory bandwidth)."""
        floor, mine = self.times.get("floor"), self.times.get("cbn")
        if floor is None or mine is None:
            return None
        return mine / floor

    def to_dict(self):
        """The result as plain JSON-ready data.

        Returns
        -------
        dict
        """
        return {
            **_case_fields(self.op, self.case),
            "nbytes": self.case.nbytes,
            "times_s": dict(self.times),
            "speedup_vs_numpy": self.speedup("numpy"),
            "speedup_vs_torch": self.speedup("torch"),
            "speedup_vs_numba": self.speedup("numba"),
            "speedup_vs_onnxruntime": self.speedup("onnxruntime"),
            "floor_ratio": self.floor_ratio,
            "spreads": dict(self.spreads),
            "noisy": self.noisy,
        }


@dataclass
class ScalingResult:
    """How much faster ``threads`` threads run one op on one case than a single thread does.

    cbn and the floor kernels are each timed at 1 and at ``threads`` threads, all four
    interleaved in the same rounds, so the two speedups are comparable: the floor kernels' is
    what this machine's caches and memory give a plain OpenMP loop over the same bytes.

    Attributes
    ----------
    op : str
        ``"forward"``, ``"backward"`` or ``"inference"``.
    case : Case
        The input configuration.
    threads : int
        The thread count compared with 1.
    times : dict
        Seconds per call, keys ``"cbn_1"``, ``"cbn_n"``, ``"floor_1"``, ``"floor_n"``.
    spreads : dict
        Median over best time of each of them (see :func:`spread`).
    """

    op: str
    case: Case
    threads: int
    times: dict = field(default_factory=dict)
    spreads: dict = field(default_factory=dict)

    @property
    def noisy(self):
        """True when some timing's rounds varied more than :data:`NOISE_THRESHOLD`."""
        return any(s > NOISE_THRESHOLD for s in self.spreads.values())

    def speedup(self, impl="cbn"):
        """Time at 1 thread over time at ``threads`` threads.

        Parameters
        ----------
        impl : {"cbn", "floor"}, default "cbn"

        Returns
        -------
        float
        """
        return self.times[f"{impl}_1"] / self.times[f"{impl}_n"]

    @property
    def relative(self):
        """cbn's speedup over the floor kernels' speedup (1.0: cbn scales as a plain loop)."""
        return self.speedup("cbn") / self.speedup("floor")

    def to_dict(self):
        """The result as plain JSON-ready data.

        Returns
        -------
        dict
        """
        return {
            **_case_fields(self.op, self.case),
            "threads": self.threads,
            "times_s": dict(self.times),
            "speedup": self.speedup("cbn"),
            "floor_speedup": self.speedup("floor"),
            "relative": self.relative,
            "spreads": dict(self.spreads),
            "noisy": self.noisy,
        }
