r"""Converts a PyTorch feature-network checkpoint into a file this package reads, once.

  python -m phenaki_jax.convert_weights inception \
      --src=pt_inception-2015-12-05-6726825d.pth --out=inception.safetensors

`inception`: the FID Inception weights of pytorch-fid (`models/inception.py`). The output,
.safetensors or .npz, holds the state dict's float tensors under their PyTorch names; it is
checked by loading it into the network before the command returns, and a JSON summary is
printed. `models.inception.load_inception_params` reads it.

This is the one place where the package unpickles a file, and only the file the user names with
`--src`: `torch.load(..., weights_only=True)`, which rebuilds tensors and plain containers and
refuses any other object. The loaders never read .pth files.

CLIP needs no conversion: `models/clip.py` reads the Hugging Face `model.safetensors` as is.
"""

import hashlib
import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from phenaki_jax.models import inception

# pytorch-fid names its file with the first hex digits of its SHA-256 (torch.hub's convention).
INCEPTION_SHA256_PREFIX = "6726825d"


def sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_torch_state_dict(src: pathlib.Path) -> dict:
  """{name: float32 numpy array} of a PyTorch state-dict file (integer buffers dropped)."""
  import torch  # pylint: disable=g-import-not-at-top; only this command needs torch

  state = torch.load(str(src), map_location="cpu", weights_only=True)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{src} holds a {type(state).__name__}, not a state dict")
  return {
    name: t.detach().to(torch.float32).numpy()
    for name, t in state.items()
    if isinstance(t, torch.Tensor) and t.is_floating_point()
  }


def write_arrays(arrays: dict, out: pathlib.Path, metadata: dict) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.suffix == ".safetensors":
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(out), metadata)
  elif out.suffix == ".npz":
    np.savez(out, **arrays)
  else:
    raise ValueError(f"--out must end in .safetensors or .npz, got {out}")


def convert_inception(src: str, out: str) -> dict:
  """pt_inception-2015-12-05 .pth -> .safetensors / .npz; returns a summary."""
  src_path, out_path = pathlib.Path(src), pathlib.Path(out)
  if out_path.suffix not in (".safetensors", ".npz"):
    raise ValueError(f"--out must end in .safetensors or .npz, got {out_path}")
  digest = sha256(src_path)
  arrays = read_torch_state_dict(src_path)
  # Check before writing: a file that does not fit the network is never produced.
  inception.params_from_torch(lambda name: arrays[name], str(src_path))
  used = {inception.torch_name(path) for path in inception.expected_shapes()}
  metadata = {"source": src_path.name, "source_sha256": digest, "format": "torch state dict"}
  write_arrays({k: v for k, v in arrays.items() if k in used}, out_path, metadata)
  params = inception.load_inception_params(str(out_path))
  return {
    "out": str(out_path),
    "source_sha256": digest,
    "sha256_matches_pytorch_fid_name": digest.startswith(INCEPTION_SHA256_PREFIX),
    "tensors": len(used),
    "ignored": sorted(set(arrays) - used),
    "parameters": int(sum(v.size for v in jax.tree_util.tree_leaves(params))),
  }


CONVERTERS = {"inception": convert_inception}


def main(argv):
  if len(argv) != 2 or argv[1] not in CONVERTERS:
    raise app.UsageError(f"name one network to convert: {sorted(CONVERTERS)}")
  summary = CONVERTERS[argv[1]](flags.FLAGS.src, flags.FLAGS.out)
  if not summary["sha256_matches_pytorch_fid_name"]:
    print(
      f"warning: {flags.FLAGS.src} has SHA-256 {summary['source_sha256'][:16]}..., not "
      f"{INCEPTION_SHA256_PREFIX}... (pytorch-fid's release): FID will not be comparable"
    )
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "The PyTorch checkpoint (.pth) to convert.")
  flags.DEFINE_string("out", None, "The file to write: .safetensors or .npz.")
  flags.mark_flags_as_required(["src", "out"])
  app.run(main)
