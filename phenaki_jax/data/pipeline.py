"""The input pipeline the trainers use: step-indexed, random-access batches from a mixture.

``Batches(mixture, global_batch_size, seed, num_frames).batch(step)`` is a pure function of
(seed, step): for every slot of the global batch a numpy Generator seeded by
``(seed, step, slot)`` draws the source by the mixture rates (Phenaki §3.3: 80% video, 20% image
by default) and then an example index, and the source renders ``example(index)``. Images are
1-frame videos padded with zero frames to ``num_frames`` and flagged ``is_image`` (the paper's
way), or with ``static_images=True`` static clips: the image repeated over all ``num_frames``,
trained as a video (not flagged).

Why random access over the seqio sources instead of iterating their tf.data datasets:
  * Exact, O(1) resume (docs/design.md, invariant 6). A restarted run asks for ``batch(step)`` and gets
    what the uninterrupted run saw at that step: no iterator state to checkpoint, nothing to
    replay, no dependence on tf.data's sampling or shuffle-buffer internals. The only data state
    is the step number, which the checkpoint already holds.
  * Multi-host slicing for free: host ``p`` of ``P`` computes only its rows
    ``[p*B/P, (p+1)*B/P)`` of the global batch, and the rows agree with a 1-host run.
  * No TensorFlow in the training process (its import alone takes seconds on the 2-core CPU).
The sources are the same objects the seqio Tasks wrap (``data/tasks.py``), so seqio stays the
task/mixture API and its tf.data path remains available for other tools.

``iterate(start_step)`` prefetches a few batches on background threads so that a jitted step
never waits for rendering; it yields exactly ``(s, batch(s))`` for s = start_step, ...
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from phenaki_jax.data import tasks as tasks_lib

_INDEX_LIMIT = 2**62  # example indices are drawn uniformly from [0, _INDEX_LIMIT)


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


class Batches:
  """Deterministic batches from a mixture of random-access sources.

  Args:
    mixture: a registered task or mixture name (e.g. 'shapes_mix'), or a list of
      (task name or source, rate). A source has ``example(index, num_frames=None) -> dict(video
      uint8 [F, H, W, 3], caption str)`` and ``is_image``.
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
    self._cumulative = np.cumsum(self.rates)
    self._cumulative[-1] = 1.0
    self.is_image = [bool(getattr(s, "is_image", False)) for s in self.sources]
    self.static_images = bool(static_images)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count
    self.prefetch, self.num_threads = max(1, int(prefetch)), max(1, int(num_threads))

    # Frame count and resolution, checked once on example 0 of every source.
    probes = [s.example(0) for s in self.sources]
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

  def slot(self, step: int, slot: int) -> tuple:
    """(source number, example index) of one slot of the global batch at ``step``."""
    rng = np.random.default_rng([self.seed, int(step), int(slot)])
    source = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
    return min(source, len(self.sources) - 1), int(rng.integers(_INDEX_LIMIT))

  def batch(self, step: int) -> dict:
    """This process's rows of global batch ``step``, a pure function of (seed, step).

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
    first = self.process_index * b
    for row in range(b):
      source, index = self.slot(step, first + row)
      if self.is_image[source]:
        example = self.sources[source].example(index)
        frames = example["video"][: self.num_frames]  # [1, H, W, 3]
        if self.static_images:
          frames = np.repeat(frames[:1], self.num_frames, axis=0)  # [F, H, W, 3]
        else:
          is_image[row] = True
      else:
        example = self.sources[source].example(index, num_frames=self.num_frames)
        frames = example["video"]  # [F, H, W, 3]
        if frames.shape[0] != self.num_frames:
          raise ValueError(
            f"Source {self.sources[source]!r} returned {frames.shape[0]} frames, "
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
    parts = ", ".join(f"{getattr(s, 'split', s)}:{r:.3f}" for s, r in zip(self.sources, self.rates))
    return (
      f"Batches({parts}; global_batch={self.global_batch_size}, seed={self.seed}, "
      f"frames={self.num_frames}, process={self.process_index}/{self.process_count})"
    )
