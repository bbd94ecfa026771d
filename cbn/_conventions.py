"""The frameworks' conventions for batch norm, in one place: the running-statistics rule, the
default momentum and epsilon, and the names of the parameters and statistics.

=========  ==============================  ===================  ===========  =================
name       running update                  stored variance      momentum     names
=========  ==============================  ===================  ===========  =================
torch      (1 - m) * running + m * batch   unbiased (n / (n-1))  0.1          weight, bias,
                                                                              running_mean,
                                                                              running_var,
                                                                              num_batches_tracked
keras      m * running + (1 - m) * batch   biased               0.99         gamma, beta,
                                                                              moving_mean,
                                                                              moving_variance
onnx       m * running + (1 - m) * batch   biased               0.9          scale, B,
                                                                              input_mean,
                                                                              input_var
flax       m * running + (1 - m) * batch   biased               0.99         scale, bias,
                                                                              mean, var
=========  ==============================  ===================  ===========  =================

Their epsilons differ too (Keras 1e-3, the others 1e-5): cbn keeps ``eps=1e-5`` unless given
(``BatchNorm.from_keras`` and ``from_onnx`` take the model's).  flax's names may come nested as
flax keeps them: ``{"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}``.
"""

from collections.abc import Mapping

#: The conventions, in the order they are documented.
CONVENTIONS = ("torch", "keras", "onnx", "flax")

#: Default ``momentum`` of each convention (in that convention's own meaning).
DEFAULT_MOMENTUM = {"torch": 0.1, "keras": 0.99, "onnx": 0.9, "flax": 0.99}

#: Default ``epsilon`` of each convention.
DEFAULT_EPS = {"torch": 1e-5, "keras": 1e-3, "onnx": 1e-5, "flax": 1e-5}

#: cbn's (torch's) name of each array -> the convention's name.
NAMES = {
    "torch": {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
              "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"},
    "keras": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
              "running_var": "moving_variance"},
    "onnx": {"weight": "scale", "bias": "B", "running_mean": "input_mean",
             "running_var": "input_var"},
    "flax": {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"},
}

#: flax's collections: where each of its names lives in a nested variables dict.
FLAX_COLLECTIONS = {"scale": "params", "bias": "params", "mean": "batch_stats",
                    "var": "batch_stats"}


class _Default:
    """Sentinel: the convention's default momentum."""

    def __repr__(self) -> str:
        return "<convention default>"


#: The default of a ``momentum`` argument: the convention's (:data:`DEFAULT_MOMENTUM`).
DEFAULT = _Default()


def check_convention(convention, name="convention"):
    """``convention`` must be one of :data:`CONVENTIONS`; returns it."""
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, CONVENTIONS))}, "
                         f"got {convention!r}")
    return convention


def update_factor(convention, momentum):
    """The weight of the batch in the running update, ``momentum`` read in ``convention``'s
    meaning (torch weighs the batch, the others the running value); None (no running
    statistics to update, so no momentum to read) stays None."""
    if momentum is None or convention == "torch":
        return momentum
    return 1.0 - momentum


def stores_unbiased(convention):
    """Whether ``convention`` keeps the unbiased batch variance in its running variance."""
    return convention == "torch"


def flatten(state):
    """A state mapping with flax's nested collections (``params``, ``batch_stats``) flattened;
    other mappings as they are."""
    if any(k in state for k in ("params", "batch_stats")) and all(
            isinstance(state[k], Mapping) for k in ("params", "batch_stats") if k in state):
        flat = {}
        for k, v in state.items():
            if k in ("params", "batch_stats"):
                flat.update(v)
            else:
                flat[k] = v
        return flat
    return dict(state)


def _meaning(convention, keys):
    """What each key names in ``convention``: key -> cbn's name (None: not one of its)."""
    back = {theirs: ours for ours, theirs in NAMES[convention].items()}
    return {k: back.get(k) for k in keys}


def detect(keys):
    """The convention whose names ``keys`` use: the one naming most of them (keys no convention
    names, and names of arrays a layer lacks, are the loader's unexpected keys).  torch when
    none names any.  Conventions that name as many but mean the same by every key (``scale``
    is ONNX's and flax's weight alike) are one answer, the first in :data:`CONVENTIONS`; a
    ValueError names the keys when they would load differently (``convention=`` decides)."""
    keys = set(keys)
    score = {c: len(keys & set(NAMES[c].values())) for c in CONVENTIONS}
    best = max(score.values())
    fits = [c for c in CONVENTIONS if score[c] == best]
    if best == 0 or all(_meaning(c, keys) == _meaning(fits[0], keys) for c in fits):
        return fits[0]
    raise ValueError(f"the keys {sorted(keys)} are names of the conventions {fits}, which would "
                     f"load them differently: pass convention= to choose")
