"""Reading a ``BatchNormalization`` node of an ONNX model: its parameters, statistics,
epsilon, momentum and mode, for ``BatchNorm.from_onnx`` and ``FrozenBatchNorm.from_onnx``.
``onnx`` is imported only here, when a model is read."""

import os

import numpy as np

_OP = "BatchNormalization"
#: The node's inputs after X, in order (ONNX's names).
INPUTS = ("scale", "B", "input_mean", "input_var")


def _load(model):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("reading an ONNX model needs the onnx package: pip install onnx") \
            from None
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto or a path to one, got "
                        f"{type(model).__name__}")
    return model, numpy_helper


def _constants(graph, numpy_helper):
    """The graph's constant tensors by name: initializers and Constant nodes' values."""
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def read_node(model, node=None):
    """The BatchNormalization node ``node`` (its name; None: the model's only one) of
    ``model`` (an ``onnx.ModelProto`` or a path).

    Returns
    -------
    dict
        ``scale``, ``B``, ``input_mean``, ``input_var`` (ndarrays of shape (C,)), ``epsilon``
        and ``momentum`` (the float32 values ONNX stores, as Python floats), ``training``
        (the node's ``training_mode``) and ``name``.
    """
    model, numpy_helper = _load(model)
    nodes = [n for n in model.graph.node
             if n.op_type == _OP and n.domain in ("", "ai.onnx")]
    if not nodes:
        raise ValueError("the model has no BatchNormalization node")
    if node is None:
        if len(nodes) > 1:
            raise ValueError(f"the model has {len(nodes)} BatchNormalization nodes "
                             f"({[n.name for n in nodes]}): pass node= to choose one")
        picked = nodes[0]
    else:
        named = [n for n in nodes if n.name == node]
        if not named:
            raise ValueError(f"no BatchNormalization node named {node!r}; the model has "
                             f"{[n.name for n in nodes]}")
        picked = named[0]
    attrs = {a.name: a for a in picked.attribute}
    if "spatial" in attrs and attrs["spatial"].i == 0:
        raise ValueError(f"node {picked.name!r} has spatial=0 (per-element statistics, ONNX "
                         f"opset < 9), which is not a batch norm over channels")
    consts = _constants(model.graph, numpy_helper)
    out = {"name": picked.name}
    for name, value in zip(INPUTS, picked.input[1:5]):
        if value not in consts:
            raise ValueError(f"input {name!r} ({value!r}) of node {picked.name!r} is not a "
                             f"constant of the model (an initializer or a Constant node)")
        arr = np.asarray(consts[value])
        if arr.ndim != 1:
            raise ValueError(f"input {name!r} of node {picked.name!r} must have shape (C,), "
                             f"got {arr.shape}")
        out[name] = arr
    if len(picked.input) < 5:
        raise ValueError(f"node {picked.name!r} has {len(picked.input)} inputs, expected 5")
    out["epsilon"] = float(np.float32(attrs["epsilon"].f)) if "epsilon" in attrs else float(
        np.float32(1e-5))
    out["momentum"] = float(np.float32(attrs["momentum"].f)) if "momentum" in attrs else float(
        np.float32(0.9))
    out["training"] = bool(attrs["training_mode"].i) if "training_mode" in attrs else False
    return out
