"""The input pipeline the trainers use: step-indexed, random-access batches from a mixture.

``Batches(mixture, global_batch_size, seed, num_frames).batch(step)`` is a pure function of
(seed, step, process): this process's rows of the global batch, each a position of a *stream*
addressed in O(1). Which stream depends on the sources:

  * **Every source infinite** (procedural Shapes, ``num_examples`` None): one *global* stream.
    Row r of process p at step s is position ``g = s · B_global + p · B_local + r``, so the
    processes' rows, concatenated in process order, are exactly the global batch of a
    1-process run: the data, and so the training, do not depend on the process count. With one
    process this is ``s · B + r``.
  * **Any finite source** (files: each process holds its own, disjoint shards): one stream per
    process, position ``g = s · B_local + r`` of it. Processes cannot share one stream here,
    since no process can render another's shards; the global batch then depends on the
    process count (each process's epochs cover its own shards).

Every position is then resolved the same way:

  * **Which source.** The stream is cut into periods of ``PERIOD`` positions; each period holds
    every source's quota (``PERIOD × rate``, largest remainders) in an order shuffled by
    (seed, period). So the mixture rates (Phenaki §3.3: 80% video, 20% image) hold exactly over
    every period, and the number of earlier draws of the same source in the stream — its
    *ordinal* k — is a table lookup.
  * **Which example.** An infinite source renders example k of the global stream (in a
    per-process stream, mixed with finite sources: ``k · process_count + process_index``, so
    processes never repeat each other). A finite source (``num_examples`` N on this process,
    after its host split) serves epoch ``k // N`` in an order shuffled by (seed, source, epoch):
    every example of the process's shards exactly once per epoch, the shards of different
    processes disjoint.
  * **Which crop.** A finite source draws its random temporal and spatial crop from a generator
    seeded by (seed, source, k): the same example gets a new crop every epoch.

An example that cannot be used (``media.SkipExample``: a corrupt or too short video, an empty
caption, ...) is skipped, counted by reason (``skip_counts``) and logged with its path at a
bounded rate; its slot takes the next example of the same epoch's order, so the batch stays
deterministic. A finite source whose first examples are all unusable fails at construction,
naming the source and the reasons.

Why random access instead of iterating the seqio tasks' tf.data datasets:
  * Exact, O(1) resume (docs/design.md, invariant 6). A restarted run asks for ``batch(step)`` and
    gets what the uninterrupted run saw at that step: no iterator state to checkpoint, nothing to
    replay. The only data state is the step number, which the checkpoint already holds.
  * Per-process epochs over disjoint shards, and each host's rows of the global stream,
    without coordination between hosts.
  * No TensorFlow in the training process (its import alone takes seconds on the 2-core CPU).
The sources are the same objects the seqio Tasks wrap (``data/tasks.py``), so a task or mixture
is defined once and seqio's tf.data path stays available for other tools.

Images are 1-frame videos padded with zero frames to ``num_frames`` and flagged ``is_image`` (the
paper's way), or with ``static_images=True`` static clips: the image repeated over all
``num_frames``, trained as a video (not flagged). ``iterate(start_step)`` prefetches a few batches
on background threads so that a jitted step never waits for decoding; it yields exactly
``(s, batch(s))`` for s = start_step, ...
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from phenaki_jax.data import media
from phenaki_jax.data import tasks as tasks_lib

PERIOD = 4096  # positions per period of the mixture's interleave
PROBE_EXAMPLES = 16  # a finite source must yield a usable example among its first this many
MAX_CONSECUTIVE_SKIPS = 64  # more unusable examples in a row than this stops the run
LOG_FIRST_SKIPS = 10  # skips logged with their path per reason, then every LOG_EVERY_SKIPS-th
LOG_EVERY_SKIPS = 100

_log = logging.getLogger(__name__)


def _resolve_sources(mixture, split: str) -> list:
  """[(source, rate)] from a task/mixture name or a list of (task name or source, rate)."""
  if isinstance(mixture, str):
    return tasks_lib.get_sources(mixture, split)
  out = []
  for item in mixture:
    if len(item) != 2:
      raise ValueError(f"Mixture entries are (task name or source, rate), got {item!r}.")
    source, rate = item
    if isinstance(source, str):
      ((source, _),) = tasks_lib.get_sources(source, split)
    if not hasattr(source, "example"):
      raise ValueError(f"{source!r} is not a source: it needs example(index, num_frames=None).")
    out.append((source, float(rate)))
  return out


def quotas(rates: np.ndarray, period: int = PERIOD) -> np.ndarray:
  """int [S]: each source's positions per period, ``period · rate`` by largest remainders; a
  source with a positive rate gets at least one."""
  exact = rates / rates.sum() * period
  counts = np.floor(exact).astype(np.int64)
  counts[(rates > 0) & (counts == 0)] = 1
  order = np.argsort(-(exact - np.floor(exact)), kind="stable")
  i = 0
  while counts.sum() < period:  # hand out the remainders, largest first
    counts[order[i % len(order)]] += 1
    i += 1
  while counts.sum() > period:  # only after the minimum of one: take from the largest
    counts[np.argmax(counts)] -= 1
  return counts


class Batches:
  """Deterministic batches from a mixture of random-access sources.

  Args:
    mixture: a registered task or mixture name (e.g. 'shapes_mix'), or a list of
      (task name or source, rate). A source has ``example(index, num_frames=None, rng=None) ->
      dict(video uint8 [F, H, W, 3], caption str)``, ``is_image``, and ``num_examples`` (None or
      absent: infinite; else its examples on this process).
    global_batch_size: rows of the global batch (over all processes).
    seed: the data-order seed (the sources have their own data seeds).
    num_frames: frames per example; None = the first video source's ``num_frames``.
    split: the seqio split of the named tasks to read ('train' for training).
    video_only: drop the image sources (the default for C-ViViT stage 1).
    static_images: images become static clips (the frame repeated ``num_frames`` times, not
      flagged ``is_image``) instead of zero-padded 1-frame videos. Not the paper's; it lets every
      time step see what only images show (e.g. Shapes' image-only colour).
    process_index, process_count: this host's rows of the global batch (default: one process).
    prefetch: batches computed ahead by ``iterate``.
    num_threads: background threads of ``iterate``.
    random_crops: finite sources crop at random (training); False: centred (evaluation).
  """

  def __init__(
    self,
    mixture: Union[str, Sequence[tuple]],
    global_batch_size: int,
    seed: int = 0,
    num_frames: Optional[int] = None,
    split: str = "train",
    video_only: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 4,
    num_threads: int = 1,
    static_images: bool = False,
    random_crops: bool = True,
  ):
    sources = _resolve_sources(mixture, split)
    if video_only:
      sources = [(s, r) for s, r in sources if not getattr(s, "is_image", False)]
      if not sources:
        raise ValueError(f"video_only=True but mixture {mixture!r} has no video source.")
    if not sources:
      raise ValueError(f"Mixture {mixture!r} has no sources.")
    rates = np.array([r for _, r in sources], np.float64)
    if np.any(rates < 0) or rates.sum() <= 0:
      raise ValueError(f"Mixture rates must be >= 0 with a positive sum, got {rates.tolist()}.")
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"process_count={process_count}."
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
    if int(seed) < 0:
      raise ValueError(f"seed must be >= 0, got {seed}.")
    self.sources = [s for s, _ in sources]
    self.rates = rates / rates.sum()  # [num_sources]
    self.quotas = quotas(self.rates)  # [num_sources], sums to PERIOD
    self.sizes = [getattr(s, "num_examples", None) for s in self.sources]  # None = infinite
    # One stream for all processes when every source can render any example; else per process.
    self.global_stream = all(size is None for size in self.sizes)
    self.is_image = [bool(getattr(s, "is_image", False)) for s in self.sources]
    self.static_images = bool(static_images)
    self.random_crops = bool(random_crops)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count
    self.prefetch, self.num_threads = max(1, int(prefetch)), max(1, int(num_threads))
    self._lock = threading.Lock()
    self._periods = collections.OrderedDict()  # period -> (source [P], ordinal in period [P])
    self._orders = collections.OrderedDict()  # (source, epoch) -> permutation [N]
    self._bad = [dict() for _ in self.sources]  # source -> {element: reason} (finite sources)
    self._skips = collections.Counter()  # reason -> examples skipped

    # Frame count and resolution, from each source's first usable example.
    probes = [self._probe(i) for i in range(len(self.sources))]
    if num_frames is None:
      video_frames = [p["video"].shape[0] for p, im in zip(probes, self.is_image) if not im]
      num_frames = video_frames[0] if video_frames else 1
    self.num_frames = int(num_frames)
    sizes = {p["video"].shape[1:] for p in probes}
    if len(sizes) != 1:
      raise ValueError(
        f"The sources of {mixture!r} render different frame sizes {sizes}; "
        f"give them one resolution."
      )
    self.frame_shape = sizes.pop()  # (H, W, 3)

  def _probe(self, source: int) -> dict:
    """The first usable example of a source; a finite one with none among its first
    PROBE_EXAMPLES fails here, naming itself and what was wrong."""
    src, size = self.sources[source], self.sizes[source]
    if size is None:
      return src.example(0)
    if size < 1:
      raise ValueError(f"Data source {_describe(src)} has no examples.")
    reasons = collections.Counter()
    for element in range(min(size, PROBE_EXAMPLES)):
      try:
        return src.example(element)
      except media.SkipExample as e:
        reasons[e.reason] += 1
        last = e
    raise ValueError(
      f"Data source {_describe(src)} yielded no usable example among its first "
      f"{min(size, PROBE_EXAMPLES)}: {dict(reasons)} (last: {last}). Check its paths and files."
    )

  @property
  def shapes(self) -> dict:
    """Shapes and dtypes of this process's batch (e.g. for jax.eval_shape)."""
    b = self.local_batch_size
    return {
      "video": ((b, self.num_frames) + tuple(self.frame_shape), np.uint8),
      "caption": ((b,), np.str_),
      "is_image": ((b,), np.bool_),
      "context_frames": ((b,), np.int32),
    }

  # ---- addressing ---------------------------------------------------------------------------
  def _period(self, period: int) -> tuple:
    with self._lock:
      if period in self._periods:
        self._periods.move_to_end(period)
        return self._periods[period]
    order = np.repeat(np.arange(len(self.sources)), self.quotas)  # [PERIOD]
    order = np.random.default_rng([self.seed, 0, period]).permutation(order)
    ordinal = np.zeros(PERIOD, np.int64)  # earlier positions of the same source in the period
    for i in range(len(self.sources)):
      mine = order == i
      ordinal[mine] = np.arange(mine.sum())
    with self._lock:
      self._periods[period] = (order, ordinal)
      while len(self._periods) > 4:
        self._periods.popitem(last=False)
    return order, ordinal

  def position(self, step: int, row: int) -> int:
    """The stream position of row ``row`` of this process's batch at ``step``: of the global
    stream (``step · B_global + process_index · B_local + row``) when every source is infinite,
    else of this process's own stream (``step · B_local + row``)."""
    if self.global_stream:
      row = self.process_index * self.local_batch_size + int(row)
      return int(step) * self.global_batch_size + row
    return int(step) * self.local_batch_size + int(row)

  def slot(self, step: int, row: int) -> tuple:
    """(source number, ordinal k: the source's earlier draws in the stream) of one row of this
    process's batch at ``step``."""
    position = self.position(step, row)
    period, offset = divmod(position, PERIOD)
    order, ordinal = self._period(period)
    source = int(order[offset])
    return source, period * int(self.quotas[source]) + int(ordinal[offset])

  def _order(self, source: int, epoch: int) -> np.ndarray:
    key = (source, epoch)
    with self._lock:
      if key in self._orders:
        return self._orders[key]
    order = np.random.default_rng([self.seed, 1 + source, epoch]).permutation(self.sizes[source])
    with self._lock:
      self._orders[key] = order
      while len(self._orders) > 2 * len(self.sources):
        self._orders.popitem(last=False)
    return order

  def _example(self, source: int, k: int) -> dict:
    """The k-th draw of a source in the stream: a rendered example, skipping unusable ones."""
    src, size = self.sources[source], self.sizes[source]
    frames = None if self.is_image[source] else self.num_frames
    if size is None:
      if self.global_stream:  # k counts the draws of all processes: the same example anywhere
        return src.example(k, num_frames=frames)
      # A per-process stream: one index space, interleaved over the processes.
      return src.example(k * self.process_count + self.process_index, num_frames=frames)
    epoch, offset = divmod(k, size)
    order = self._order(source, epoch)
    for attempt in range(MAX_CONSECUTIVE_SKIPS + 1):
      element = int(order[(offset + attempt) % size])
      rng = (
        np.random.default_rng([self.seed, 1 + source, k, attempt]) if self.random_crops else None
      )
      reason = self._bad[source].get(element)
      if reason is None:  # not known to be unusable
        try:
          return src.example(element, num_frames=frames, rng=rng)
        except media.SkipExample as e:
          self._bad[source][element] = e.reason  # not decoded again
          self._count_skip(e)
      else:
        self._count_skip(media.SkipExample(reason, f"{_describe(src)}[{element}]"))
    raise RuntimeError(
      f"Data source {_describe(src)}: {MAX_CONSECUTIVE_SKIPS + 1} unusable examples in a row "
      f"(skipped so far: {dict(self._skips)}). Check the data."
    )

  def _count_skip(self, error: media.SkipExample) -> None:
    with self._lock:
      self._skips[error.reason] += 1
      n = self._skips[error.reason]
    if n <= LOG_FIRST_SKIPS or n % LOG_EVERY_SKIPS == 0:
      _log.warning("skipped an example (%d so far for this reason): %s", n, error)

  def skip_counts(self) -> dict:
    """{reason: examples skipped} on this process since the pipeline was built, plus the
    shards its sources could not index ('unreadable_shard', counted once)."""
    counts = collections.Counter()
    for src in self.sources:
      counts.update(getattr(src, "index_skips", None) or {})
    with self._lock:
      counts.update(self._skips)
    return dict(counts)

  # ---- batches ------------------------------------------------------------------------------
  def batch(self, step: int) -> dict:
    """This process's rows of global batch ``step``, a pure function of (seed, step, process).

    Returns:
      dict(video=uint8 [B, F, H, W, 3], caption=str [B], is_image=bool [B],
      context_frames=int32 [B] (an example's own ``context_frames``, e.g. a turn clip's frames
      before its turn; 0 for the rest)), B the local batch.
    """
    if int(step) < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    b = self.local_batch_size
    video = np.zeros((b, self.num_frames) + tuple(self.frame_shape), np.uint8)  # [B, F, H, W, 3]
    captions, is_image = [], np.zeros((b,), np.bool_)  # [B]
    context = np.zeros((b,), np.int32)  # [B]
    for row in range(b):
      source, k = self.slot(step, row)
      example = self._example(source, k)
      frames = example["video"]  # [F, H, W, 3]; [1, H, W, 3] for an image
      if self.is_image[source]:
        frames = frames[: self.num_frames]
        if self.static_images:
          frames = np.repeat(frames[:1], self.num_frames, axis=0)  # [F, H, W, 3]
        else:
          is_image[row] = True
      elif frames.shape[0] != self.num_frames:
        raise ValueError(
          f"Source {_describe(self.sources[source])} returned {frames.shape[0]} frames, "
          f"expected {self.num_frames}."
        )
      video[row, : frames.shape[0]] = frames
      captions.append(example["caption"])
      context[row] = int(example.get("context_frames", 0))
    return dict(
      video=video,
      caption=np.array(captions, dtype=np.str_),
      is_image=is_image,
      context_frames=context,
    )

  def iterate(self, start_step: int = 0, num_steps: Optional[int] = None) -> Iterator[tuple]:
    """Yields (step, batch(step)) from ``start_step`` on, computed ``prefetch`` steps ahead.

    Resuming at step s yields exactly what an uninterrupted run sees at s. Close the generator
    (or let it be garbage-collected) to stop the background threads.
    """
    end = None if num_steps is None else int(start_step) + int(num_steps)
    executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=self.num_threads, thread_name_prefix="batches"
    )
    pending = collections.deque()
    next_step = int(start_step)
    try:
      while True:
        while len(pending) < self.prefetch and (end is None or next_step < end):
          pending.append((next_step, executor.submit(self.batch, next_step)))
          next_step += 1
        if not pending:
          return
        step, future = pending.popleft()
        yield step, future.result()
    finally:
      for _, future in pending:
        future.cancel()
      executor.shutdown(wait=False, cancel_futures=True)

  def __repr__(self):
    parts = ", ".join(f"{_describe(s)}:{r:.3f}" for s, r in zip(self.sources, self.rates))
    return (
      f"Batches({parts}; global_batch={self.global_batch_size}, seed={self.seed}, "
      f"frames={self.num_frames}, process={self.process_index}/{self.process_count}, "
      f"{'global' if self.global_stream else 'per-process'} stream)"
    )


def _describe(source) -> str:
  describe = getattr(source, "describe", None)
  return describe() if callable(describe) else repr(getattr(source, "split", source))
