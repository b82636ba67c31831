import numpy as np

from nnlib.core.params import LayerSpec, init_params, pack, to_named, unpack


def test_pack_unpack_round_trip():
    spec = LayerSpec((5, 4, 3))
    flat = np.arange(spec.n_params, dtype=np.float32)
    arrays = unpack(flat, spec)
    assert [a.shape for a in arrays] == [(5, 4), (4,), (4, 3), (3,)]
    assert spec.n_params == 5 * 4 + 4 + 4 * 3 + 3
    np.testing.assert_array_equal(pack(arrays), flat)
    named = to_named(flat, spec)
    assert list(named) == ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias"]
    np.testing.assert_array_equal(pack(list(named.values())), flat)
    assert [(a, b) for a, b, _ in spec.offsets] == [(0, 20), (20, 24), (24, 36), (36, 39)]


def test_weight_mask_marks_weights_not_biases():
    spec = LayerSpec((2, 3, 1))
    mask = spec.weight_mask()
    arrays = unpack(mask, spec)
    assert arrays[0].min() == 1 and arrays[2].min() == 1
    assert arrays[1].max() == 0 and arrays[3].max() == 0


def test_init_depends_only_on_seed():
    spec = LayerSpec((64, 32, 10))
    a, b, c = init_params(spec, 1), init_params(spec, 1), init_params(spec, 2)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    w0, b0 = unpack(a, spec)[:2]
    limit = np.sqrt(6 / (64 + 32))
    assert np.abs(w0).max() <= limit and not b0.any()
