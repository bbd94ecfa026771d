"""Framework conventions through the whole API (cbn/_conventions.py): the running-statistics
rule of the functions, the layer's state dicts in each framework's names, Keras's weight list
both ways, and layers read from ONNX models -- against the frameworks themselves when they are
installed (ONNX Runtime's inference and training modes, onnx's model builder, Keras 3)."""

import os

import numpy as np
import pytest

import cbn
from cbn import _conventions as conv

RULES = {  # batch weight, whether the stored variance is unbiased
    "torch": (lambda m: m, True), "keras": (lambda m: 1 - m, False),
    "onnx": (lambda m: 1 - m, False), "flax": (lambda m: 1 - m, False)}


def _expected_running(x, rm, rv, momentum, convention, axis=1):
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    x64 = x.astype(np.float64)
    n = x64.size // x64.shape[axis]
    mean, var = x64.mean(red), x64.var(red)
    f, unbiased = RULES[convention]
    f = f(momentum)
    v = var * n / (n - 1) if unbiased else var
    return (1 - f) * rm + f * mean, (1 - f) * rv + f * v


@pytest.mark.parametrize("convention", conv.CONVENTIONS)
@pytest.mark.parametrize("momentum", [None, 0.3])
def test_functional_running_statistics_follow_the_convention(rng, convention, momentum):
    x = rng.standard_normal((6, 4, 5, 5)) * 2 + 1
    rm0, rv0 = rng.standard_normal(4), rng.random(4) + 0.5
    m = conv.DEFAULT_MOMENTUM[convention] if momentum is None else momentum
    kw = {} if momentum is None else {"momentum": momentum}
    want_m, want_v = _expected_running(x, rm0, rv0, m, convention)
    rm, rv = rm0.copy(), rv0.copy()
    f = cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, convention=convention, **kw)
    np.testing.assert_allclose(rm, want_m, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(rv, want_v, rtol=1e-13)
    plain = cbn.batch_norm_forward(x)  # the output and statistics do not depend on it
    np.testing.assert_array_equal(f.out, plain.out)
    rm, rv = rm0.copy(), rv0.copy()
    y = cbn.batch_norm(x, rm, rv, training=True, convention=convention, **kw)
    np.testing.assert_array_equal(y, plain.out)
    np.testing.assert_allclose(rm, want_m, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(rv, want_v, rtol=1e-13)
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd
    rm, rv = rm0.copy(), rv0.copy()
    cd.batch_norm_forward(da.from_array(x, chunks=(3, 4, 5, 5)), running_mean=rm,
                          running_var=rv, convention=convention, **kw)
    np.testing.assert_allclose(rm, want_m, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(rv, want_v, rtol=1e-13)


def test_momentum_is_not_read_without_running_statistics():
    x = np.random.default_rng(0).standard_normal((4, 3))
    for convention in conv.CONVENTIONS:  # torch's rule: momentum applies to the update only
        f = cbn.batch_norm_forward(x, momentum=None, convention=convention)
        np.testing.assert_array_equal(f.out, cbn.batch_norm_forward(x).out)
        with pytest.raises(ValueError, match="momentum"):
            cbn.batch_norm_forward(x, running_mean=np.zeros(3), momentum=1.5,
                                   convention=convention)


def test_functional_convention_is_checked():
    x = np.ones((2, 3))
    for call in (lambda: cbn.batch_norm_forward(x, convention="tf"),
                 lambda: cbn.batch_norm(x, np.zeros(3), np.ones(3), convention="TORCH"),
                 lambda: cbn.BatchNorm(3, convention="jax")):
        with pytest.raises(ValueError, match="convention must be one of 'torch', 'keras', "
                                             "'onnx', 'flax'"):
            call()


# ------------------------------------------------------------------------------ state dicts
def _trained(convention="torch", **kw):
    bn = cbn.BatchNorm(3, dtype=np.float64, convention=convention, **kw)
    bn(np.random.default_rng(0).standard_normal((8, 3)))
    bn.weight[:] = [1.5, 2.0, 0.5]
    if bn.bias is not None:
        bn.bias[:] = [0.1, 0.2, 0.3]
    return bn


@pytest.mark.parametrize("convention", conv.CONVENTIONS)
def test_state_dict_in_each_framework_s_names_round_trips(convention):
    a = _trained()
    sd = a.state_dict(convention=convention)
    names = conv.NAMES[convention]
    assert list(sd) == [names[k] for k in ("weight", "bias", "running_mean", "running_var",
                                           "num_batches_tracked") if k in names]
    for detected in (None, convention):
        b = cbn.BatchNorm(3, dtype=np.float64)
        res = b.load_state_dict(sd, convention=detected)
        assert res.missing_keys == [] and res.unexpected_keys == []
        for k in ("weight", "bias", "running_mean", "running_var"):
            np.testing.assert_array_equal(getattr(b, k), getattr(a, k))
    assert list(a.state_dict()) == list(a.state_dict(convention="torch"))  # the default


def test_flax_nested_variables_load():
    a = _trained()
    flat = a.state_dict(convention="flax")
    nested = {"params": {"scale": flat["scale"], "bias": flat["bias"]},
              "batch_stats": {"mean": flat["mean"], "var": flat["var"]}}
    b = cbn.BatchNorm(3, dtype=np.float64)
    b.load_state_dict(nested)
    np.testing.assert_array_equal(b.running_var, a.running_var)
    np.testing.assert_array_equal(b.weight, a.weight)


def test_state_dict_errors_name_the_keys():
    bn = cbn.BatchNorm(3)
    with pytest.raises(ValueError, match=r"\['B', 'bias'\].*would load them differently.*"
                                         r"convention="):
        bn.load_state_dict({"B": np.ones(3), "bias": np.ones(3)})  # ONNX's B, or torch's bias
    # names that several conventions share, meaning the same array, are no ambiguity
    bn.load_state_dict({"scale": np.full(3, 3.0)}, strict=False)  # ONNX's and flax's weight
    assert (bn.weight == 3).all()
    bn.load_state_dict({"bias": np.full(3, 4.0)}, strict=False)  # torch's and flax's bias
    assert (bn.bias == 4).all()
    with pytest.raises(TypeError, match="num_batches_tracked"):
        bf16 = pytest.importorskip("ml_dtypes").bfloat16
        bn.load_state_dict({"num_batches_tracked": np.array(3, bf16)}, strict=False)
    keras = _trained().state_dict(convention="keras")
    with pytest.raises(KeyError, match="missing key.*'moving_variance'.*convention 'keras'"):
        bn.load_state_dict({k: v for k, v in keras.items() if k != "moving_variance"})
    with pytest.raises(KeyError, match="unexpected key.*'gamma'"):
        bn.load_state_dict(keras, convention="onnx")
    with pytest.raises(ValueError, match="convention must be one of"):
        bn.state_dict(convention="caffe")
    res = bn.load_state_dict({"gamma": np.full(3, 2.0), "moving_mean": np.ones(3)},
                             strict=False)
    assert res.missing_keys == ["beta", "moving_variance"] and res.unexpected_keys == []
    assert (bn.weight == 2).all() and (bn.running_mean == 1).all()


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False),
                                          (False, False)])
def test_to_keras_is_the_inverse_of_from_keras(center, scale):
    rng = np.random.default_rng(1)
    weights = ([rng.standard_normal(4)] if scale else []) + (
        [rng.standard_normal(4)] if center else []) + [rng.standard_normal(4),
                                                        rng.random(4) + 0.5]
    layer = cbn.BatchNorm.from_keras(weights, center=center, scale=scale)
    back = layer.to_keras()
    assert len(back) == len(weights)  # scale=False: the fixed weight is no gamma
    for got, want in zip(back, weights):
        np.testing.assert_allclose(got, want.astype(np.float32))
    with pytest.raises(ValueError, match="running statistics"):
        cbn.BatchNorm(4, track_running_stats=False).to_keras()


def test_keras_layer_takes_our_weights_and_matches_our_training_step():
    os.environ.setdefault("KERAS_BACKEND", "numpy")  # Keras 3 on NumPy (it imports jax)
    keras = pytest.importorskip("keras")
    if keras.backend.backend() not in ("numpy", "jax", "torch", "tensorflow"):
        pytest.skip("no Keras backend")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((16, 6)) * 3 + 1).astype(np.float32)
    ours = cbn.BatchNorm(6, eps=1e-3, axis=-1, convention="keras")
    ours.load_state_dict({"gamma": rng.random(6) + 0.5, "beta": rng.standard_normal(6),
                          "moving_mean": rng.standard_normal(6),
                          "moving_variance": rng.random(6) + 0.5})
    theirs = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    theirs.build((None, 6))
    theirs.set_weights(ours.to_keras())
    y = ours(x)
    ty = np.asarray(theirs(x, training=True))
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    got = ours.to_keras()
    for a, b in zip(got, theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ours.eval()  # Keras's trainable=False: the moving statistics even in a training call
    theirs.trainable = False
    np.testing.assert_allclose(ours(x), np.asarray(theirs(x, training=True)), rtol=1e-5,
                               atol=1e-5)


# ------------------------------------------------------------------------------------- ONNX
def _onnx_model(C, eps=1e-5, momentum=0.9, training=False, names=("bn",), seed=0,
                opset=15):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "X"
    for i, name in enumerate(names):
        arrs = {"scale": rng.random(C) + 0.5, "B": rng.standard_normal(C),
                "mean": rng.standard_normal(C), "var": rng.random(C) + 0.5}
        ins = [prev]
        for k, a in arrs.items():
            inits.append(numpy_helper.from_array(a.astype(np.float32), f"{k}{i}"))
            ins.append(f"{k}{i}")
        out = "Y" if i == len(names) - 1 else f"h{i}"
        outs = [out] + (["running_mean", "running_var"] if training else [])
        attrs = {"epsilon": eps, "momentum": momentum}
        if training:
            attrs["training_mode"] = 1
        nodes.append(helper.make_node("BatchNormalization", ins, outs, name=name, **attrs))
        prev = out
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    if training:
        outputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, None)
                    for k in ("running_mean", "running_var")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, None)], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort_run(model, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})


def test_from_onnx_matches_onnxruntime_inference(tmp_path):
    x = np.random.default_rng(4).standard_normal((4, 5, 6, 6)).astype(np.float32)
    model = _onnx_model(5, eps=1e-3)
    want = _ort_run(model, x)[0]
    frozen = cbn.FrozenBatchNorm.from_onnx(model)
    np.testing.assert_allclose(frozen(x), want, rtol=2e-6, atol=2e-6)
    layer = cbn.BatchNorm.from_onnx(model)
    assert not layer.training and layer.convention == "onnx"
    assert layer.eps == float(np.float32(1e-3)) and layer.momentum == float(np.float32(0.9))
    np.testing.assert_allclose(layer(x), want, rtol=2e-6, atol=2e-6)
    path = tmp_path / "bn.onnx"
    path.write_bytes(model.SerializeToString())
    np.testing.assert_array_equal(cbn.FrozenBatchNorm.from_onnx(str(path))(x), frozen(x))
    np.testing.assert_array_equal(cbn.BatchNorm.from_onnx(path)(x), layer(x))


def test_onnx_training_mode_matches_onnxruntime():
    x = (np.random.default_rng(5).standard_normal((8, 3, 4, 4)) * 2 + 1).astype(np.float32)
    model = _onnx_model(3, eps=1e-5, momentum=0.8, training=True)
    try:
        y, rm_t, rv_t = _ort_run(model, x)
    except Exception as e:  # builds of ONNX Runtime without the training-mode kernel
        pytest.skip(f"ONNX Runtime does not run BatchNormalization in training mode: {e}")
    layer = cbn.BatchNorm.from_onnx(model)
    assert layer.training
    np.testing.assert_allclose(layer(x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.running_mean, rm_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_var, rv_t, rtol=1e-5, atol=1e-6)
    # the functional form with convention="onnx" does the same without a layer
    p = cbn.BatchNorm.from_onnx(model)
    rm, rv = p.running_mean.copy(), p.running_var.copy()
    f = cbn.batch_norm_forward(x, p.weight, p.bias, eps=p.eps, running_mean=rm,
                               running_var=rv, momentum=p.momentum, convention="onnx")
    np.testing.assert_allclose(f.out, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, rm_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_t, rtol=1e-5, atol=1e-6)


def test_from_onnx_errors():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    two = _onnx_model(3, names=("first", "second"))
    with pytest.raises(ValueError, match=r"2 BatchNormalization nodes.*\['first', 'second'\]"):
        cbn.BatchNorm.from_onnx(two)
    with pytest.raises(ValueError, match="no BatchNormalization node named 'third'"):
        cbn.FrozenBatchNorm.from_onnx(two, node="third")
    assert cbn.BatchNorm.from_onnx(two, node="second").num_features == 3
    relu = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]))
    with pytest.raises(ValueError, match="no BatchNormalization node"):
        cbn.BatchNorm.from_onnx(relu)
    dynamic = helper.make_model(helper.make_graph(
        [helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y"], name="bn")],
        "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, None)
              for k in ("X", "s", "b", "m", "v")],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]))
    with pytest.raises(ValueError, match="input 'scale' .* is not a constant"):
        cbn.BatchNorm.from_onnx(dynamic)
    with pytest.raises(TypeError, match="onnx.ModelProto or a path"):
        cbn.BatchNorm.from_onnx(42)
    with pytest.raises(ValueError, match="training_mode=1.*BatchNorm.from_onnx"):
        cbn.FrozenBatchNorm.from_onnx(_onnx_model(3, training=True))
