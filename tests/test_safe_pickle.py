"""models/safe_pickle.py: numpy-array pickles load; anything else is refused, naming it."""

import os
import pickle

import numpy as np
import pytest

from phenaki_jax.models import safe_pickle


def test_numpy_arrays_and_containers_round_trip(tmp_path):
  tree = {
    "a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.zeros(3)},
    "b": [np.int64(3), (np.array([True]), 1.5, "name")],
  }
  path = tmp_path / "w.ckpt"
  path.write_bytes(pickle.dumps(tree, protocol=3))
  got = safe_pickle.load(path)
  np.testing.assert_array_equal(got["a"]["kernel"], tree["a"]["kernel"])
  assert got["a"]["kernel"].dtype == np.float32 and got["b"][1][2] == "name"
  assert sorted(safe_pickle.flatten({"a": got["a"]})) == ["a/bias", "a/kernel"]
  for protocol in (3, 4, 5):
    loaded = safe_pickle.loads(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(loaded["a"]["bias"], tree["a"]["bias"])


class _Boom:
  def __reduce__(self):
    return (os.system, ("echo owned",))


@pytest.mark.parametrize(
  "payload", [_Boom(), {"x": _Boom()}, np.array([_Boom()], dtype=object), print]
)
def test_anything_else_is_refused_by_name(tmp_path, payload):
  path = tmp_path / "bad.ckpt"
  path.write_bytes(pickle.dumps(payload))
  with pytest.raises(pickle.UnpicklingError, match=r"bad\.ckpt: refusing to load"):
    safe_pickle.load(path)
