"""seqio Tasks and Mixtures: the Shapes set and the user's files (Phenaki §3.3: joint image +
video training). Both trainers read their data by task or mixture name from this registry.

Registered at import (the defaults, ``ShapesSpec()`` and seed 0):
  * ``shapes_video``            videos of the seen triples; seqio splits 'train' and 'validation'
                                (the 'eval' stream: same triples, never a training clip).
  * ``shapes_video_heldout``    videos of the held-out triples (split 'validation').
  * ``shapes_video_image_only`` videos in image-only colours (split 'validation').
  * ``shapes_image``            1-frame images of every colour and shape (split 'train').
  * ``shapes_mix``              80% ``shapes_video`` + 20% ``shapes_image`` (the paper's mix).
``register_shapes_mixture`` adds other rates (paper Table 2: 100/0, 80/20, 50/50) or specs;
``register_task`` / ``register_mixture`` add any random-access source, e.g. the webdataset,
WebVid-index and TFDS sources of ``data/sources.py``. ``mixture_from_config`` registers what a
trainer config's ``data`` field describes (Shapes, or files: ``default_config`` lists the keys)
and returns the mixture's name.

Two layers, so that trainers need not import TensorFlow (slow to import, heavy on a 2-core CPU):
  1. A plain-Python registry of random-access sources (``source.example(index)``) and mixture
     rates. ``data/pipeline.py`` reads a mixture by name and builds each step's batch from it,
     addressed by step (exact resume, disjoint rows per host; docs/design.md).
  2. The same tasks registered with seqio (``seqio.TaskRegistry`` / ``seqio.MixtureRegistry``),
     each backed by ``ExampleDataSource``, a ``seqio.FunctionDataSource`` whose tf.data dataset
     maps the index range through the source (dropping unusable examples) and which also offers
     ``example(index)``. This happens on ``register_seqio()`` / ``get_seqio(name)``, or at
     registration when seqio is already imported, so ``import seqio; import
     phenaki_jax.data.tasks; seqio.get_mixture_or_task('shapes_mix').get_dataset(...)`` works as
     usual.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from typing import Mapping, Optional, Sequence

import numpy as np

from phenaki_jax.data import media
from phenaki_jax.data import shapes as shapes_lib

DEFAULT_SPEC = shapes_lib.ShapesSpec()
DEFAULT_SEED = 0
# Examples per seqio split of an infinite source: a finite "epoch" for tf.data users. Random
# access has no limit.
SEQIO_EXAMPLES_PER_SPLIT = 1_000_000


def _num_indexes(source) -> int:
  size = getattr(source, "num_examples", None)
  return SEQIO_EXAMPLES_PER_SPLIT if size is None else int(size)


@dataclasses.dataclass(frozen=True)
class ShapesSource:
  """Random-access Shapes examples of one split: ``example(index)`` is a pure function.

  Attributes:
    spec: what the data looks like.
    seed: the data seed (each (seed, split, index) is one fixed example).
    split: a video split of ``shapes.SPLITS`` ('train', 'eval', 'heldout', 'image_only'),
      'image' for 1-frame images, or 'turn' for story-mode turn clips (``shapes.turn_example``:
      their examples carry ``context_frames``, which the native pipeline passes on as a batch
      field; the seqio tasks do not).
    context_frames: frames before the turn of a 'turn' clip (ignored by other splits).
  """

  spec: shapes_lib.ShapesSpec = DEFAULT_SPEC
  seed: int = DEFAULT_SEED
  split: str = "train"
  context_frames: int = 5

  def __post_init__(self):
    splits = shapes_lib.SPLITS + ("image", "turn")
    if self.split not in splits:
      raise ValueError(f"ShapesSource.split must be one of {splits}, got {self.split!r}.")
    if self.split == "turn" and not 1 <= self.context_frames < self.spec.num_frames:
      raise ValueError(
        f"ShapesSource.context_frames must be in [1, {self.spec.num_frames}) "
        f"for turn clips, got {self.context_frames!r}."
      )

  @property
  def is_image(self) -> bool:
    return self.split == "image"

  def describe(self) -> str:
    frames = "1 frame" if self.is_image else f"{self.spec.num_frames} frames"
    return f"shapes:{self.split} ({frames} of {self.resolution}², seed {self.seed})"

  @property
  def num_frames(self) -> int:
    return 1 if self.is_image else self.spec.num_frames

  @property
  def resolution(self) -> int:
    return self.spec.resolution

  def example(self, index: int, num_frames: Optional[int] = None) -> dict:
    """Example ``index``: dict(video=uint8 [F, H, W, 3] (F = 1 for images), caption=str,
    color, shape, and direction for videos). ``num_frames`` overrides the spec's (videos)."""
    if self.is_image:
      return shapes_lib.image_example(self.spec, self.seed, index)
    if self.split == "turn":
      return shapes_lib.turn_example(self.spec, self.seed, index, self.context_frames, num_frames)
    return shapes_lib.video_example(self.spec, self.seed, index, self.split, num_frames)


# ----------------------------------------------------------------------------------------------
# Plain-Python registry (no TensorFlow).
# ----------------------------------------------------------------------------------------------
_TASKS = {}  # name -> {seqio split: source}
_MIXTURES = {}  # name -> ((task name, rate), ...)


def shapes_mixture(
  spec: shapes_lib.ShapesSpec,
  seed: int,
  *,
  video_rate: float,
  image_rate: float,
  turn_rate: float = 0.0,
  turn_context_frames: int = 5,
) -> list:
  """[(ShapesSource, rate)] for a trainer's native pipeline: plain training clips, a
  ``turn_rate`` share of the videos as turn clips (turning after ``turn_context_frames``
  frames), and images when ``image_rate`` > 0."""
  mixture = [(ShapesSource(spec, seed, "train"), video_rate * (1.0 - turn_rate))]
  if turn_rate > 0:
    mixture.append((ShapesSource(spec, seed, "turn", turn_context_frames), video_rate * turn_rate))
  if image_rate > 0:
    mixture.append((ShapesSource(spec, seed, "image"), image_rate))
  return mixture


def register_task(name: str, splits: Mapping[str, object]) -> str:
  """Registers a task: seqio split name -> random-access source (a ShapesSource, or a
  ``data/sources.py`` source of files). Re-registering the same thing is a no-op."""
  splits = dict(splits)
  if name in _MIXTURES or (name in _TASKS and _TASKS[name] != splits):
    raise ValueError(
      f"A different task or mixture named {name!r} is already registered; pick another name."
    )
  _TASKS[name] = splits
  if _seqio_loaded():
    _register_task_with_seqio(name)
  return name


def register_shapes_tasks(
  prefix: str = "shapes", spec: shapes_lib.ShapesSpec = DEFAULT_SPEC, seed: int = DEFAULT_SEED
) -> dict:
  """Registers ``{prefix}_video``, ``_video_heldout``, ``_video_image_only`` and ``_image``."""
  names = {
    "video": register_task(
      f"{prefix}_video",
      {"train": ShapesSource(spec, seed, "train"), "validation": ShapesSource(spec, seed, "eval")},
    ),
    "video_heldout": register_task(
      f"{prefix}_video_heldout", {"validation": ShapesSource(spec, seed, "heldout")}
    ),
    "video_image_only": register_task(
      f"{prefix}_video_image_only", {"validation": ShapesSource(spec, seed, "image_only")}
    ),
    "image": register_task(f"{prefix}_image", {"train": ShapesSource(spec, seed, "image")}),
  }
  return names


def register_mixture(name: str, tasks_and_rates: Sequence[tuple]) -> str:
  """Registers a mixture of registered tasks; zero rates are dropped, rates need not sum to 1."""
  entries = tuple((str(task), float(rate)) for task, rate in tasks_and_rates if float(rate) != 0)
  if not entries:
    raise ValueError(f"Mixture {name!r} has no task with a positive rate: {tasks_and_rates!r}.")
  for task, rate in entries:
    if task not in _TASKS:
      raise ValueError(
        f"Mixture {name!r} names task {task!r}, which is not registered; "
        f"known tasks: {sorted(_TASKS)}."
      )
    if rate < 0 or not np.isfinite(rate):
      raise ValueError(f"Mixture {name!r}: rate {rate} of {task!r} must be >= 0.")
  if name in _TASKS or (name in _MIXTURES and _MIXTURES[name] != entries):
    raise ValueError(
      f"A different task or mixture named {name!r} is already registered; pick another name."
    )
  _MIXTURES[name] = entries
  if _seqio_loaded():
    _register_mixture_with_seqio(name)
  return name


def register_shapes_mixture(
  name: str,
  video_rate: float = 0.8,
  image_rate: float = 0.2,
  spec: Optional[shapes_lib.ShapesSpec] = None,
  seed: int = DEFAULT_SEED,
) -> str:
  """A mixture of Shapes videos and images at the given rates (e.g. 1.0/0.0, 0.8/0.2, 0.5/0.5).

  With the default spec and seed it mixes ``shapes_video`` and ``shapes_image``; otherwise it
  first registers ``{name}_video``/``{name}_image`` (and the eval tasks) for that spec and seed.
  Returns the mixture name.
  """
  spec = DEFAULT_SPEC if spec is None else spec
  if spec == DEFAULT_SPEC and seed == DEFAULT_SEED:
    prefix = "shapes"
  else:
    prefix = name
  names = register_shapes_tasks(prefix, spec, seed)
  return register_mixture(name, [(names["video"], video_rate), (names["image"], image_rate)])


def default_config(**overrides):
  """The ``data`` field both trainers' configs share (ml_collections.ConfigDict): which data,
  in what mixture, from which files. The configs set the rest (rates, frames, batch size)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(
    dict(
      source="shapes",  # "shapes" (the embedded procedural set) or "files"
      # A registered task or mixture name to read instead (any source); data.module_imports
      # are imported first, e.g. a module of the user's that registers seqio tasks.
      mixture="",
      module_imports=(),
      seed=0,
      prefetch=4,  # batches prepared ahead of the step
      # Threads preparing those batches (each thread a whole batch). Decoding real video takes
      # several cores per accelerator (BENCHMARKS.md, "Data throughput"); 1 suits Shapes.
      threads=1,
      static_images=False,  # images as static clips (trained as videos), not 1-frame videos
      # Turn clips (Shapes only): this share of the video examples turns after its first
      # turn_context_frames frames, the motion a story continuation produces. 0 = off.
      turn_rate=0.0,
      turn_context_frames=5,
      # Files (source="files"), decoded at `fps` frames per second (the paper's 8):
      # webdataset tar shards as video2dataset / img2dataset write them (lists, globs, brace
      # patterns, local or gs://), ...
      video_shards="",
      image_shards="",
      # ... a WebVid-style CSV or parquet index over a folder of videos, ...
      video_index="",
      video_dir="",
      video_index_template="{page_dir}/{videoid}.mp4",
      video_index_caption="name",
      video_index_duration="duration",
      # ... and a prepared TFDS dataset (ArrayRecord), its caption from a feature or a template
      # over features ("a video of {label}"); tfds_fps places a video's frames in time.
      tfds_name="",
      tfds_data_dir="",
      tfds_split="train",
      tfds_kind="video",
      tfds_caption_key="",
      tfds_caption_template="",
      tfds_fps=0.0,
      # Held-out clips for the C-ViViT's reconstruction evaluation (source="files").
      eval_video_shards="",
      eval_video_index="",
      fps=8.0,
      max_caption_chars=256,
    )
  )
  config.update(overrides)
  return config


def _digest(*parts) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


SOURCES = ("shapes", "files")


def mixture_from_config(
  data,
  *,
  num_frames: int,
  resolution: int,
  video_rate: float,
  image_rate: float,
  process_index: int = 0,
  process_count: int = 1,
) -> str:
  """Registers the tasks and the mixture that a trainer config's ``data`` field describes and
  returns the mixture's name (``data.mixture`` itself when it names a registered one).

  ``data.source``: 'shapes' (the procedural set: plain clips, a ``data.turn_rate`` share of the
  videos as turn clips, images) or 'files': webdataset shards (``data.video_shards``,
  ``data.image_shards``), a WebVid-style index (``data.video_index`` over ``data.video_dir``) and
  a TFDS dataset (``data.tfds_name``), each decoded at ``data.fps`` to ``num_frames`` frames of
  ``resolution``². ``video_rate`` is shared by the video sources and ``image_rate`` by the image
  sources in proportion to their examples. The sources of files hold this process's shards.
  """
  if data.get("mixture", ""):
    get_sources(data.mixture)  # fails now, naming the registered ones, if it is unknown
    return data.mixture
  if data.source not in SOURCES:
    raise ValueError(f"config.data.source={data.source!r} is not one of {SOURCES}")
  if data.source == "shapes":
    spec = shapes_lib.ShapesSpec(resolution=resolution, num_frames=num_frames)
    entries = shapes_mixture(
      spec,
      data.seed,
      video_rate=video_rate,
      image_rate=image_rate,
      turn_rate=data.turn_rate,
      turn_context_frames=data.turn_context_frames,
    )
    named = [(f"shapes_{src.split}_{_digest(src)}", src, rate) for src, rate in entries]
    for name, src, _ in named:
      register_task(name, {"train": src})
    return register_mixture(
      f"shapes_mix_{_digest(named)}", [(name, rate) for name, _, rate in named]
    )
  key = _digest(dict(data), num_frames, resolution, process_index, process_count)
  if f"files_mix_{key}" in _MIXTURES:
    return f"files_mix_{key}"
  videos, images = files_from_config(
    data,
    clip=media.ClipSpec(num_frames=num_frames, fps=data.fps, resolution=resolution),
    process_index=process_index,
    process_count=process_count,
  )
  if not videos:
    raise ValueError(
      "config.data.source='files' needs video data: set config.data.video_shards, "
      "config.data.video_index (with config.data.video_dir) or config.data.tfds_name"
    )
  if images and image_rate <= 0:
    images = []
  if image_rate > 0 and not images:
    raise ValueError(
      f"config.data.image_rate={image_rate} but no image data: set config.data.image_shards "
      f"(or config.data.tfds_name with config.data.tfds_kind='image'), or image_rate=0"
    )
  entries = []
  for group, rate in ((videos, video_rate), (images, image_rate)):
    total = sum(src.num_examples for src in group)
    for i, src in enumerate(group):
      name = f"files_{'image' if src.is_image else 'video'}{i}_{key}"
      register_task(name, {"train": src})
      entries.append((name, rate * src.num_examples / total))
  return register_mixture(f"files_mix_{key}", entries)


def files_from_config(data, *, clip, process_index: int = 0, process_count: int = 1, eval=False):
  """(video sources, image sources) of files named by a config's ``data`` field (its
  ``eval_`` prefixed keys with ``eval=True``: the held-out clips)."""
  from phenaki_jax.data import sources  # pylint: disable=g-import-not-at-top

  p = "eval_" if eval else ""
  host = dict(process_index=process_index, process_count=process_count)
  videos, images = [], []
  if data.get(p + "video_shards", ""):
    videos.append(
      sources.WebDatasetSource(
        data[p + "video_shards"],
        kind="video",
        clip=clip,
        max_caption_chars=data.max_caption_chars,
        **host,
      )
    )
  if data.get(p + "video_index", ""):
    videos.append(
      sources.IndexSource(
        data[p + "video_index"],
        data.video_dir,
        clip=clip,
        path_template=data.video_index_template,
        caption_column=data.video_index_caption,
        duration_column=data.video_index_duration,
        max_caption_chars=data.max_caption_chars,
        **host,
      )
    )
  if not eval and data.get("image_shards", ""):
    images.append(
      sources.WebDatasetSource(
        data.image_shards,
        kind="image",
        clip=clip,
        max_caption_chars=data.max_caption_chars,
        **host,
      )
    )
  if not eval and data.get("tfds_name", ""):
    src = sources.TfdsSource(
      data.tfds_name,
      kind=data.tfds_kind,
      clip=clip,
      split=data.tfds_split,
      data_dir=data.tfds_data_dir or None,
      caption_key=data.tfds_caption_key or None,
      caption_template=data.tfds_caption_template or None,
      source_fps=data.tfds_fps or None,
      **host,
    )
    (images if src.is_image else videos).append(src)
  return videos, images


def task_names() -> list:
  return sorted(_TASKS)


def mixture_names() -> list:
  return sorted(_MIXTURES)


def get_sources(name: str, split: str = "train") -> list:
  """[(source, rate)] of a registered task (rate 1) or mixture, for one seqio split."""
  if name in _TASKS:
    entries = ((name, 1.0),)
  elif name in _MIXTURES:
    entries = _MIXTURES[name]
  else:
    raise ValueError(
      f"Unknown task or mixture {name!r}; registered tasks: {task_names()}, "
      f"mixtures: {mixture_names()}. Register it with register_shapes_mixture()."
    )
  out = []
  for task, rate in entries:
    if split not in _TASKS[task]:
      raise ValueError(f"Task {task!r} has no split {split!r}; it has {sorted(_TASKS[task])}.")
    out.append((_TASKS[task][split], rate))
  return out


# ----------------------------------------------------------------------------------------------
# seqio (imports TensorFlow).
# ----------------------------------------------------------------------------------------------
def _seqio_loaded() -> bool:
  return "seqio" in sys.modules


@functools.lru_cache(maxsize=None)
def _seqio_classes():
  """Builds the seqio-dependent pieces on first use (importing TensorFlow)."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class ExampleDataSource(seqio.FunctionDataSource):
    """A seqio FunctionDataSource over random-access sources (one per split).

    ``get_dataset(split)`` maps the source's indexes (``range(num_examples)``, or
    ``range(SEQIO_EXAMPLES_PER_SPLIT)`` for an infinite one) through its ``example`` in index
    order, centre-cropped, dropping the examples it cannot use (``media.SkipExample``). A Shapes
    index is an independent random draw, so its order needs no shuffle; ``shuffle_files`` and
    ``seed`` are ignored. ``example(index, split='train')`` returns the dataset's
    ``index``-th example before the drop.
    """

    def __init__(self, splits: Mapping[str, object]):
      self._sources = dict(splits)
      super().__init__(
        dataset_fn=self._dataset_fn_impl,
        splits=tuple(self._sources),
        num_input_examples={s: _num_indexes(src) for s, src in self._sources.items()},
        caching_permitted=False,
      )

    def source(self, split: str = "train"):
      if split not in self._sources:
        raise ValueError(f"No split {split!r}; this source has {sorted(self._sources)}.")
      return self._sources[split]

    def example(self, index: int, split: str = "train") -> dict:
      return self.source(split).example(index)

    def _dataset_fn_impl(self, split, shuffle_files, seed=None):
      del shuffle_files, seed  # deterministic by index; see the class docstring
      source = self.source(split)
      is_image = bool(getattr(source, "is_image", False))

      def render(index):
        try:
          ex = source.example(int(index))
        except media.SkipExample:
          return np.zeros((0, 1, 1, 3), np.uint8), np.bytes_(b""), np.bool_(is_image), False
        return ex["video"], np.bytes_(ex["caption"].encode()), np.bool_(is_image), True

      def to_features(index):
        video, caption, image, ok = tf.numpy_function(
          render, [index], (tf.uint8, tf.string, tf.bool, tf.bool), stateful=False
        )
        return {
          "video": tf.ensure_shape(video, [None, None, None, 3]),  # [F, H, W, 3]
          "caption": tf.ensure_shape(caption, []),
          "is_image": tf.ensure_shape(image, []),
        }, tf.ensure_shape(ok, [])

      dataset = tf.data.Dataset.range(_num_indexes(source)).map(
        to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
      return dataset.filter(lambda features, ok: ok).map(lambda features, ok: features)

  output_features = {
    "video": seqio.Feature(seqio.PassThroughVocabulary(256), add_eos=False, dtype=tf.uint8, rank=4),
    "caption": seqio.Feature(
      seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.string, rank=0
    ),
    "is_image": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.bool, rank=0),
  }
  return seqio, ExampleDataSource, output_features


def _register_task_with_seqio(name: str):
  seqio, data_source_cls, output_features = _seqio_classes()
  if name in seqio.TaskRegistry.names():
    existing = seqio.TaskRegistry.get(name).source
    if getattr(existing, "_sources", None) == _TASKS[name]:
      return
    raise ValueError(f"seqio already has a different task named {name!r}.")
  seqio.TaskRegistry.add(
    name,
    source=data_source_cls(_TASKS[name]),
    preprocessors=[],
    output_features=output_features,
    metric_fns=[],
  )


def _register_mixture_with_seqio(name: str):
  seqio, _, _ = _seqio_classes()
  for task, _ in _MIXTURES[name]:
    _register_task_with_seqio(task)
  if name in seqio.MixtureRegistry.names():
    mixture = seqio.MixtureRegistry.get(name)
    existing = tuple((t.name, float(mixture.get_rate(t))) for t in mixture.tasks)
    if sorted(existing) == sorted(_MIXTURES[name]):
      return
    raise ValueError(f"seqio already has a different mixture named {name!r}.")
  seqio.MixtureRegistry.add(name, list(_MIXTURES[name]))


def register_seqio():
  """Registers every task and mixture of this module with seqio (imports TensorFlow)."""
  for name in list(_TASKS):
    _register_task_with_seqio(name)
  for name in list(_MIXTURES):
    _register_mixture_with_seqio(name)


def get_seqio(name: str):
  """The seqio Task or Mixture ``name`` (registering this module's tasks first)."""
  register_seqio()
  seqio, _, _ = _seqio_classes()
  return seqio.get_mixture_or_task(name)


# Default registrations (plain Python; with seqio too when it is already imported).
register_shapes_tasks("shapes", DEFAULT_SPEC, DEFAULT_SEED)
register_shapes_mixture("shapes_mix", 0.8, 0.2)
