"""Assembling a text encoder's Flax params tree from a checkpoint's named arrays.

The T5 and MiniLM loaders map each of their param paths to a `Source`: the checkpoint's name
for the array, a function that reads it, and whether it is stored transposed (a torch Linear
weight is [out, in], a Flax kernel [in, out]). `assemble` reads every source, checks each
shape in the file's own layout (so errors quote the file's shapes and name the tensor), and
raises one ValueError listing every missing or misshapen tensor.
"""

import functools
import pathlib
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MAX_PROBLEMS = 20  # problems listed in an error; the rest are counted


class Source(NamedTuple):
  """Where one param comes from in a checkpoint."""

  name: str  # the checkpoint's name for the array, quoted in errors
  read: Callable[[], np.ndarray]  # raises KeyError when the checkpoint lacks the array
  transposed: bool  # stored as the transpose of the param (a torch Linear weight)


def source(read: Callable[[str], np.ndarray], name: str, transposed: bool = False) -> Source:
  """The `Source` that reads `name` with `read` (name -> array)."""
  return Source(name, lambda: read(name), transposed)


@functools.lru_cache(maxsize=16)
def expected_shapes(model: nn.Module) -> dict:
  """{param path tuple: shape} of a text encoder (tokens [B, L], mask [B, L]), no allocation."""
  abstract = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)
  )
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(abstract)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def _natural(path: tuple) -> tuple:
  """Sort key putting layers_2 before layers_10."""
  return tuple((int(p.split("_")[-1]), p) if p.startswith("layers_") else (-1, p) for p in path)


def assemble(
  model: nn.Module, sources: Mapping[tuple, Source], header: str, dtype: Optional[Any] = None
) -> dict:
  """Builds the params tree of `model` from `sources` {param path: Source}.

  Args:
    model: the encoder whose params are wanted (`expected_shapes` gives their paths).
    sources: where each param path is found in the checkpoint.
    header: the first line of the error, naming the checkpoint and what it does not fit.
    dtype: the arrays are cast to it when given; otherwise they keep the file's dtype.

  Returns:
    The nested params dict, as numpy arrays in the model's layout.

  Raises:
    ValueError: `header`, then one line per param whose source is missing or whose tensor is
      absent or has a shape other than the one expected (in the file's layout).
  """
  problems, flat = [], {}
  for path, shape in sorted(expected_shapes(model).items(), key=lambda kv: _natural(kv[0])):
    if path not in sources:
      problems.append(f"missing tensor for {'/'.join(path)} (expected shape {shape})")
      continue
    name, read, transposed = sources[path]
    want = shape[::-1] if transposed else shape  # in the file's layout
    try:
      value = np.asarray(read(), dtype)
    except KeyError:
      problems.append(f"missing tensor {name!r} (expected shape {want})")
      continue
    if value.shape != want:
      problems.append(f"tensor {name!r} has shape {value.shape}, expected {want}")
      continue
    flat[path] = value.T if transposed else value
  if problems:
    more = len(problems) - MAX_PROBLEMS
    raise ValueError(
      f"{header}:\n  "
      + "\n  ".join(problems[:MAX_PROBLEMS])
      + (f"\n  ... and {more} more" if more > 0 else "")
    )
  return flax.traverse_util.unflatten_dict(flat)


def open_safetensors(files: Sequence[pathlib.Path]) -> tuple[list[str], Callable[[str], Any]]:
  """(tensor names, lazy reader) over safetensors files (bfloat16 included), host memory only.

  The reader raises KeyError for a name that no file holds.
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  owner = {}
  for f in files:
    with safe_open(str(f), framework="numpy") as fp:
      owner.update({k: f for k in fp.keys()})

  def read(name: str) -> np.ndarray:
    f = owner[name]  # KeyError = missing tensor
    try:
      with safe_open(str(f), framework="numpy") as fp:
        return fp.get_tensor(name)
    except TypeError:  # numpy has no bfloat16: go through jax on the host CPU.
      with jax.default_device(jax.devices("cpu")[0]), safe_open(str(f), framework="flax") as fp:
        return np.asarray(fp.get_tensor(name))

  return list(owner), read
