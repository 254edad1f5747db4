"""exitc.data: calibration files read against the model's inputs."""

import numpy as np
import pytest
from onnx import TensorProto

from exitc.data import cast_to, load_dataset
from exitc.errors import ExitcError
from exitc.passes.graph import TensorInfo

IMAGE = TensorInfo("pixels", TensorProto.FLOAT, ["batch", 1, 4, 4])
IDS = TensorInfo("input_ids", TensorProto.INT32, ["batch", 6])


def test_float64_and_int64_arrays_are_cast_where_their_values_survive(tmp_path):
    x = np.random.default_rng(0).random((5, 1, 4, 4))  # numpy's default float64
    ids = np.arange(30, dtype=np.int64).reshape(5, 6)
    np.savez(tmp_path / "c.npz", pixels=x, input_ids=ids)
    d = load_dataset(str(tmp_path / "c.npz"), [IMAGE, IDS])
    assert d.feeds["pixels"].dtype == np.float32 and d.feeds["input_ids"].dtype == np.int32
    np.testing.assert_allclose(d.feeds["pixels"], x, rtol=1e-7)
    assert np.array_equal(d.feeds["input_ids"], ids)
    assert d.casts == {"pixels": "float64 -> float32", "input_ids": "int64 -> int32"}
    assert d.take(np.arange(2)).casts == d.casts


@pytest.mark.parametrize("arr,dtype", [
    (np.array([1.5, 2.0]), np.int64),                 # float to int: never
    (np.array([2 ** 40], np.int64), np.int32),        # does not fit
    (np.array([1e300]), np.float32),                  # overflows to inf
    (np.array([2 ** 60 + 1], np.int64), np.float64),  # loses its last bits
    (np.array([1, 0]), np.bool_),                     # anything to bool: never
])
def test_casts_that_change_values_are_refused(arr, dtype):
    assert cast_to(arr, np.dtype(dtype)) is None


def test_refused_cast_is_one_line_naming_tensor_and_dtypes(tmp_path):
    np.savez(tmp_path / "c.npz", input_ids=np.full((5, 6), 2 ** 40, np.int64))
    with pytest.raises(ExitcError, match=r"c.npz: tensor 'input_ids' has dtype int64, the model expects int32"):
        load_dataset(str(tmp_path / "c.npz"), [IDS])


def test_rows_on_another_axis_are_read_rows_first(tmp_path):
    # a time-major input [time, rows, features] (passes.normalize.rows_first_inputs): the Dataset
    # holds rows first, and file_layout gives the file's layout back
    from exitc.data import file_layout

    x = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    np.savez(tmp_path / "d.npz", x=x)
    info = TensorInfo("x", TensorProto.FLOAT, ["batch", 5, 3])
    data = load_dataset(str(tmp_path / "d.npz"), [info], batch_axes={"x": 1})
    assert data.rows == 7 and data.feeds["x"].shape == (7, 5, 3)
    np.testing.assert_array_equal(data.feeds["x"][2], x[:, 2])
    back = file_layout({"x": data.feeds["x"][2:4]}, {"x": 1})["x"]
    assert back.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(back, x[:, 2:4])
    # a wrong size is named in the file's layout
    np.savez(tmp_path / "bad.npz", x=np.zeros((6, 7, 3), np.float32))
    with pytest.raises(ExitcError, match=r"bad.npz: tensor 'x' has shape \[6, 7, 3\], the model expects "
                                         r"\[5, 'rows', 3\] \(axis 0\)"):
        load_dataset(str(tmp_path / "bad.npz"), [info], batch_axes={"x": 1})
