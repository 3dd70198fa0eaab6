r"""The reference side of benchmarks/vs_phenaki_pytorch.py: phenaki-pytorch 0.5.0 in its own venv.

Runs under that venv's Python (torch, no JAX) and answers JSON lines on stdin, one per line:

  {"cmd": "setup", "size": {...}, "threads": 2}   builds the models and optimizers of a size
  {"cmd": "run", "op": "cvivit_recon", "runs": 3}  runs an op, returns each run's seconds
  {"cmd": "shapes", "resolution": 32, "num_frames": 9, "data_seed": 0, "text": "x.npz"}
                                                   trains on Shapes from here on (the quality
                                                   race): our procedural clips, imported from
                                                   the repository (numpy only), and the
                                                   captions' MiniLM embeddings from `text`
  {"cmd": "clips", "path": "pool.npy", "data_seed": 0}
                                                   trains on these uint8 clips [N, F, H, W, 3]
                                                   from here on instead (the real-footage race;
                                                   a new shuffled order every epoch)
  {"cmd": "train", "stage": "cvivit", "seconds": 60}   trains for that long on Shapes or clips
  {"cmd": "sample", "prompts": [...], "seed": 0, "out": "x.npy"}   guided samples, uint8
  {"cmd": "reconstruct", "path": "in.npy", "out": "x.npy"}   the C-ViViT's encode + decode of
                                                   uint8 clips [N, F, H, W, 3], uint8
  {"cmd": "quit"}

Every answer is one JSON line on stdout ({"ok": true, ...} or {"ok": false, "error": ...}).

The reference's optional pieces are replaced as follows, so that nothing is downloaded:
  * torchvision (whose registry wheel does not import beside the CPU torch) by an in-memory
    module whose `models.vgg16` is the standard VGG16 architecture (13 3×3 convolutions, 5 max
    pools, a 7×7 adaptive pool, 3 fully connected layers), randomly initialised, written here;
  * the T5 text encoder by MiniLM-sized embeddings passed in (`text_embeds=` in training; for
    sampling `encode_texts` returns them), with `T5_CONFIGS` pre-filled with a local config.
"""

import json
import math
import os
import statistics
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vgg16_standin():
  """A `torchvision` module object with `models.vgg16` (the VGG16 architecture, random init)."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  class VGG16(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      layers, channels = [], 3
      for stage in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
        for width in stage:
          layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
          channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(4096, num_classes),
      )

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(x.flatten(1))

  def vgg16(pretrained=False, **kwargs):
    del pretrained  # random weights: the cost is the architecture's
    kwargs.pop("weights", None)
    return VGG16(**kwargs)

  def unavailable(name):
    """A callable that may be built (the reference builds some at import) but never applied."""

    class Unavailable:
      def __init__(self, *args, **kwargs):
        del args, kwargs

      def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"torchvision.{name} is not part of the stand-in")

    return Unavailable

  tv = types.ModuleType("torchvision")
  tv.__path__ = []  # a package: the reference imports submodules (for its data loaders only)
  tv.__version__ = "0.0-standin"
  tv.models = types.ModuleType("torchvision.models")
  tv.models.vgg16 = vgg16
  # Names the reference's data loaders and trainers import, never called by the benchmark.
  submodules = {
    "transforms": ("Compose", "Lambda", "Resize", "RandomHorizontalFlip", "CenterCrop"),
    "utils": ("make_grid", "save_image"),
    "datasets": ("ImageFolder",),
  }
  for sub, names in submodules.items():
    module = types.ModuleType(f"torchvision.{sub}")
    for name in names + (("ToTensor", "ToPILImage") if sub == "transforms" else ()):
      setattr(module, name, unavailable(f"{sub}.{name}"))
    setattr(tv, sub, module)
  return tv


def install_standins():
  import transformers  # noqa: F401  (imported before the stand-in is visible)
  from transformers import T5Config

  tv = vgg16_standin()
  sys.modules["torchvision"] = tv
  for sub in ("models", "transforms", "utils", "datasets"):
    sys.modules[f"torchvision.{sub}"] = getattr(tv, sub)
  from phenaki_pytorch import t5  # pylint: disable=g-import-not-at-top

  t5.T5_CONFIGS[t5.DEFAULT_T5_NAME] = dict(config=T5Config(d_model=384))


class Reference:
  """The reference's models, optimizers and inputs for one size, and its timed ops."""

  def __init__(self, size: dict, seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn
    from phenaki_pytorch import CViViT, MaskGit
    from phenaki_pytorch.optimizer import get_optimizer

    torch.manual_seed(seed)
    self.torch = torch
    s = self.size = size
    width, heads = s["width"], s["heads"]
    self.vgg = vgg16_standin().models.vgg16()
    # As the reference does with its own VGG16: the last Linear (and its dropout) removed.
    self.vgg.classifier = nn.Sequential(*self.vgg.classifier[:-2])
    # Frozen, as ours is (the reference's trainer also hands it to the generator's AdamW:
    # leaving that out only makes the reference's step cheaper).
    self.vgg.requires_grad_(False)
    self.cvivit = CViViT(
      dim=width,
      codebook_size=s["codebook"],
      image_size=s["resolution"],
      patch_size=s["patch"],
      temporal_patch_size=s["temporal_patch"],
      spatial_depth=s["spatial_depth"],
      temporal_depth=s["temporal_depth"],
      dim_head=width // heads,
      heads=heads,
      use_vgg_and_gan=True,
      vgg=self.vgg,
      lookup_free_quantization=False,
    )
    discr = set(self.cvivit.discr.parameters())
    frozen = set(self.vgg.parameters())
    gen_params = [p for p in self.cvivit.parameters() if p not in discr and p not in frozen]
    self.opt = get_optimizer(gen_params, lr=s["lr"], wd=s["weight_decay"])
    self.gen_params = gen_params
    self.discr_opt = get_optimizer(list(discr), lr=s["lr"], wd=s["weight_decay"])

    b, f, r = s["batch"], s["num_frames"], s["resolution"]
    self.video = torch.rand(b, 3, f, r, r) * 2 - 1
    t = 1 + (f - 1) // s["temporal_patch"]
    g = r // s["patch"]
    self.maskgit = MaskGit(
      dim=s["maskgit_width"],
      num_tokens=s["codebook"],
      max_seq_len=t * g * g,
      heads=heads,
      dim_head=s["maskgit_width"] // heads,
      depth=s["maskgit_depth"],
      dim_context=s["text_dim"],
    )
    self.phenaki = self._build_phenaki()
    self.maskgit_opt = get_optimizer(
      list(self.maskgit.parameters()), lr=s["lr"], wd=s["weight_decay"]
    )
    # Text: random embeddings with the padding zeroed (the reference's mask is "not all zero").
    text = torch.randn(b, s["text_len"], s["text_dim"])
    lengths = torch.randint(2, s["text_len"] + 1, (b,))
    self.text = text * (torch.arange(s["text_len"])[None] < lengths[:, None])[..., None]
    self.phenaki.encode_texts = lambda texts, output_device=None: self.text[: len(texts)]

  def _build_phenaki(self):
    """The reference's Phenaki around this MaskGIT and (a frozen copy of) this C-ViViT."""
    from phenaki_pytorch import Phenaki  # pylint: disable=g-import-not-at-top

    s = self.size
    return Phenaki(
      maskgit=self.maskgit,
      cvivit=self.cvivit,
      steps=s["sample_steps"],
      text_embed_dim=s["text_dim"],
      cond_drop_prob=s["text_dropout"],
    )

  # ---- ops ----------------------------------------------------------------------------------
  def cvivit_recon(self, video=None):
    """L2 + VQ of the reconstruction, AdamW: the reference's own encoder, quantizer and decoder
    (its forward returns L2 alone when the VGG and GAN are off, so the VQ loss is added here)."""
    torch, m = self.torch, self.cvivit
    m.train()
    video = self.video if video is None else video
    first = m.to_patch_emb_first_frame(video[:, :, :1])
    rest = m.to_patch_emb(video[:, :, 1:])
    tokens = torch.cat((first, rest), dim=1)
    shape = tokens.shape
    tokens = m.encode(tokens).reshape(shape[0], -1, shape[-1])
    tokens, _, vq_loss = m.vq(tokens)
    recon = m.decode(tokens.reshape(shape))
    loss = torch.nn.functional.mse_loss(video, recon) + vq_loss.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.gen_params, self.size["clip_norm"])
    self.opt.step()
    self.opt.zero_grad()
    return float(loss)

  def cvivit_full(self):
    """The reference trainer's step: the generator (L2 + VQ + VGG perceptual + adaptive-weight
    adversarial), clipped, AdamW; then the discriminator (hinge + gradient penalty) on a fresh
    pass, AdamW. The gradient penalty runs every step (the trainer's default: every 4th)."""
    torch, m = self.torch, self.cvivit
    m.train()
    loss = m(self.video)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.gen_params, self.size["clip_norm"])
    self.opt.step()
    self.opt.zero_grad()
    self.discr_opt.zero_grad()
    d_loss = m(self.video, return_discr_loss=True, apply_grad_penalty=True)
    d_loss.backward()
    self.discr_opt.step()
    self.discr_opt.zero_grad()
    self.opt.zero_grad()  # the discriminator pass also reached the generator's grads
    return float(loss)

  def maskgit_step(self, video=None, text=None):
    """The reference's stage-2 loss (videos tokenised by the frozen C-ViViT in the step, text
    embeddings given, 25% dropped), clipped, AdamW."""
    torch = self.torch
    self.phenaki.maskgit.train()
    video = self.video if video is None else video
    text = self.text if text is None else text
    loss = self.phenaki(videos=video, text_embeds=text)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.maskgit.parameters(), self.size["clip_norm"])
    self.maskgit_opt.step()
    self.maskgit_opt.zero_grad()
    return float(loss)

  def sample(self):
    """One batch, the reference's `sample` (its steps, guidance by a second pass), decoded."""
    s = self.size
    video = self.phenaki.sample(
      texts=["a caption"] * s["batch"], num_frames=s["num_frames"], cond_scale=s["cfg_scale"]
    )
    return float(video.float().mean())

  def encode_decode(self):
    torch, m = self.torch, self.phenaki.cvivit  # the frozen copy sampling uses
    with torch.no_grad():
      ids = m(self.video, return_only_codebook_ids=True)
      video = m.decode_from_codebook_indices(ids)
    return float(video.mean())

  OPS = ("cvivit_recon", "cvivit_full", "maskgit_step", "sample", "encode_decode")

  # ---- the quality race: Shapes -------------------------------------------------------------
  def use_shapes(self, resolution: int, num_frames: int, data_seed: int, text: str):
    """Trains on our Shapes clips (split 'train', indices step·B + i of `data_seed`) from here
    on, with the captions' embeddings in the npz `text` (captions, tokens [n, L, D], mask
    [n, L]); padding tokens are zeroed, the reference's own text mask."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    sys.path.insert(0, REPO)
    from phenaki_jax.data import shapes  # pylint: disable=g-import-not-at-top

    self.shapes = shapes
    self.spec = shapes.ShapesSpec(resolution=resolution, num_frames=num_frames)
    self.data_seed, self.data_index = int(data_seed), 0
    with np.load(text) as f:
      tokens = f["tokens"] * f["mask"][..., None]
      self.embeddings = {
        str(c): self.torch.from_numpy(t.astype(np.float32)) for c, t in zip(f["captions"], tokens)
      }
    self.phenaki.encode_texts = lambda texts, output_device=None: self.embed(texts)
    self.next_batch = self.shapes_batch

  def embed(self, captions):
    return self.torch.stack([self.embeddings[c] for c in captions])

  def shapes_batch(self):
    """The next batch: video [B, 3, F, H, W] in [-1, 1] and its captions."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    b = self.size["batch"]
    examples = [
      self.shapes.video_example(self.spec, self.data_seed, self.data_index + i, "train")
      for i in range(b)
    ]
    self.data_index += b
    video = np.stack([e["video"] for e in examples]).astype(np.float32) / 127.5 - 1.0
    video = self.torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous()
    return video, [e["caption"] for e in examples]

  # ---- the quality race: real footage -------------------------------------------------------
  def use_clips(self, path: str, data_seed: int):
    """Trains the C-ViViT on the uint8 clips [N, F, H, W, 3] of the .npy `path` from here on,
    in batches of the size's batch, every epoch in a new order drawn from `data_seed`."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    self.pool = np.load(path)
    self.pool_rng = np.random.default_rng(int(data_seed))
    self.pool_order = np.zeros((0,), np.int64)
    self.next_batch = self.pool_batch

  def pool_batch(self):
    """The next batch of the clips: video [B, 3, F, H, W] in [-1, 1], no captions."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    b = self.size["batch"]
    while len(self.pool_order) < b:
      self.pool_order = np.concatenate([self.pool_order, self.pool_rng.permutation(len(self.pool))])
    rows, self.pool_order = self.pool_order[:b], self.pool_order[b:]
    video = self.pool[rows].astype(np.float32) / 127.5 - 1.0
    return self.torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous(), None

  def reconstruct(self, path: str, out: str) -> dict:
    """The trained C-ViViT's encode (to code indices) + decode of the uint8 clips in `path`, in
    batches of the size's batch, saved as uint8 [N, F, H, W, 3] to `out`."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    torch, m = self.torch, self.cvivit
    clips = np.load(path)
    m.eval()
    recon = []
    with torch.no_grad():
      for i in range(0, len(clips), self.size["batch"]):
        video = torch.from_numpy(clips[i : i + self.size["batch"]].astype(np.float32) / 127.5 - 1)
        ids = m(video.permute(0, 4, 1, 2, 3).contiguous(), return_only_codebook_ids=True)
        video = m.decode_from_codebook_indices(ids)  # [B, 3, F, H, W], the training range
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        recon.append(video.permute(0, 2, 3, 4, 1).numpy())
    np.save(out, np.concatenate(recon))
    return dict(clips=len(clips))

  def train(self, stage: str, seconds: float) -> dict:
    """Trains one stage for `seconds` of wall clock (data included, as ours) on Shapes or, after
    `use_clips`, on those clips (the C-ViViT only)."""
    if not hasattr(self, "next_batch"):
      raise ValueError("no training data: send a 'shapes' or a 'clips' command first")
    if stage == "maskgit" and self.next_batch == self.pool_batch:
      raise ValueError("the clips have no captions: train the MaskGIT on Shapes")
    if stage == "maskgit":
      # Phenaki keeps its own frozen copy of the C-ViViT, taken when it is built: rebuild it
      # around the trained one.
      encode = self.phenaki.encode_texts
      self.phenaki = self._build_phenaki()
      self.phenaki.encode_texts = encode
    elif stage != "cvivit":
      raise ValueError(f"unknown stage {stage!r}")
    t0, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
      video, captions = self.next_batch()
      if stage == "cvivit":
        losses.append(self.cvivit_recon(video))
      else:
        losses.append(self.maskgit_step(video, self.embed(captions)))
      steps += 1
    tail = losses[-max(1, len(losses) // 10) :]
    return dict(steps=steps, seconds=round(time.perf_counter() - t0, 1), loss=sum(tail) / len(tail))

  def sample_prompts(self, prompts, seed: int, out: str) -> dict:
    """Guided samples of `prompts` in batches of the race's batch, saved as uint8
    [N, F, H, W, 3] to the .npy `out`."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    torch, s = self.torch, self.size
    torch.manual_seed(seed)
    self.phenaki.eval()
    clips = []
    with torch.no_grad():
      for i in range(0, len(prompts), s["batch"]):
        video = self.phenaki.sample(
          texts=list(prompts[i : i + s["batch"]]),
          num_frames=s["num_frames"],
          cond_scale=s["cfg_scale"],
        )  # [B, 3, F, H, W], the training range [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        clips.append(video.permute(0, 2, 3, 4, 1).numpy())
    np.save(out, np.concatenate(clips))
    return dict(clips=len(prompts))


def main():
  ref = None
  for line in sys.stdin:
    msg = json.loads(line)
    try:
      if msg["cmd"] == "quit":
        break
      if msg["cmd"] == "setup":
        import torch  # pylint: disable=g-import-not-at-top

        torch.set_num_threads(int(msg["threads"]))
        install_standins()
        t = time.perf_counter()
        ref = Reference(msg["size"])
        out = dict(
          setup_s=round(time.perf_counter() - t, 2),
          torch=torch.__version__,
          threads=torch.get_num_threads(),
          interop_threads=torch.get_num_interop_threads(),
        )
      elif msg["cmd"] == "run":
        if msg["op"] not in Reference.OPS:
          raise ValueError(f"unknown op {msg['op']!r}")
        fn = getattr(ref, msg["op"])
        times = []
        for _ in range(int(msg["runs"])):
          t = time.perf_counter()
          value = fn()
          times.append(time.perf_counter() - t)
        if not math.isfinite(value):
          raise FloatingPointError(f"{msg['op']} gave {value}")
        out = dict(times=times, median=statistics.median(times))
      elif msg["cmd"] == "shapes":
        ref.use_shapes(msg["resolution"], msg["num_frames"], msg["data_seed"], msg["text"])
        out = {}
      elif msg["cmd"] == "clips":
        ref.use_clips(msg["path"], msg["data_seed"])
        out = {}
      elif msg["cmd"] == "reconstruct":
        out = ref.reconstruct(msg["path"], msg["out"])
      elif msg["cmd"] == "train":
        out = ref.train(msg["stage"], float(msg["seconds"]))
      elif msg["cmd"] == "sample":
        out = ref.sample_prompts(msg["prompts"], int(msg["seed"]), msg["out"])
      else:
        raise ValueError(f"unknown command {msg['cmd']!r}")
      print(json.dumps(dict(ok=True, **out)), flush=True)
    except Exception as e:  # pylint: disable=broad-except
      print(json.dumps(dict(ok=False, error=f"{type(e).__name__}: {e}")), flush=True)


if __name__ == "__main__":
  main()
