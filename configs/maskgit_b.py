r"""Stage 2: the text-conditioned MaskGIT over frozen C-ViViT tokens (Phenaki §4.2, app. B).

Variants:
  configs/maskgit_b.py:tiny    CPU demo on Shapes: tiny MaskGIT, embedded MiniLM text encoder,
                               80% video / 20% image mixture. Needs the tiny C-ViViT trained
                               into config.tokenizer.workdir first.
  configs/maskgit_b.py:paper   the paper: 1.8B MaskGIT (24 layers, width 2048, 32 heads),
                               T5-XXL text, batch 512, cosine to 4M steps, 10K warm-up.

  python -m phenaki_jax.train --config=configs/maskgit_b.py:tiny --workdir=workdirs/maskgit \
      --config.tokenizer.workdir=workdirs/cvivit
"""
import ml_collections

from phenaki_jax import optim, text


def get_config(arg: str = "tiny"):
  variant = arg or "tiny"
  if variant not in ("tiny", "paper"):
    raise ValueError(f"unknown variant {variant!r} of configs/maskgit_b.py; use tiny or paper")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.trainer = "maskgit"
  c.seed = 0
  c.mesh = (-1, 1, 1) if tiny else (-1, 16, 1)

  c.model_size = "tiny" if tiny else "1.8B"
  # head: "dense" (untied) or "tied" (MaskGIT's: logits from the token embeddings); on Shapes
  # (tiny, 1300 steps, patch-local tokenizer) they scored within noise of each other.
  # group: the transformer runs over g×g groups of tokens (models/maskgit.py). tiny uses 2: the
  # 5×8×8 token grid becomes 80 positions, a step costs ~2.5× less on a 2-core CPU, and the
  # demo's budget buys 3600–4000 steps instead of 1300 — objects then get their shape (Shapes,
  # seen prompts all three attributes right: 0.76 vs 0.37; BENCHMARKS.md). The paper: 1.
  c.model = ml_collections.ConfigDict(dict(dropout=0.0, scan=not tiny, remat=not tiny,
                                           dtype="float32" if tiny else "bfloat16",
                                           head="dense", group=2 if tiny else 1))

  # "codebook": the code embeddings start as a random projection of the C-ViViT's ℓ2 code
  # vectors (alike codes start alike); "normal": N(0, 0.02). On Shapes (tiny, 1300 steps) the
  # codebook start gave 46% vs 35% of seen prompts followed in all three attributes.
  c.token_embed_init = "codebook" if tiny else "normal"

  # The frozen stage-1 tokenizer: a C-ViViT work directory (its config.json + checkpoints).
  c.tokenizer = ml_collections.ConfigDict(dict(workdir="workdirs/demo/cvivit", step=-1))

  c.text_encoder = text.default_config()
  if not tiny:
    c.text_encoder.name = "t5"
    c.text_encoder.size = "xxl"
    c.text_encoder.checkpoint = ""   # set: HF google/t5-v1_1-xxl safetensors or a T5X checkpoint
    c.text_encoder.max_length = 64
    c.text_encoder.dtype = "bfloat16"
  c.text_dropout = 0.1               # examples trained with the null caption (for CFG)
  # Frame prediction: this share of the videos keep their first 1..t-1 time steps given (the
  # mask is drawn over the rest), as in story mode and image-to-video. 0 = plain MaskGIT. On
  # Shapes 0.3 made stories worse (segments 0.54 vs 0.61, mean jump 4.5 vs 3.3 px; BENCHMARKS.md).
  c.prefix_rate = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.source = "shapes"
  c.data.video_rate = 0.8            # paper Table 2: 80% video, 20% image
  c.data.image_rate = 0.2
  # Images as static clips: the image repeated over every frame, trained as a video (loss on all
  # its tokens), instead of the paper's 1-frame video with loss on its first-frame tokens only.
  # With 1-frame images no later time step ever shows a colour that only images have (Shapes'
  # orange), so neither the C-ViViT's tubelet codes nor the MaskGIT's later-step predictions
  # can render it; static clips show it there, still without motion (they count as videos in
  # the logged image_fraction / loss_image). tiny: on (image-only colour 0.00 -> 0.80-0.83, two
  # MaskGIT draws; BENCHMARKS.md); the paper configs keep 1-frame images.
  c.data.static_images = tiny
  # tiny: batch 8 buys twice the updates of 16 in the demo's budget, which learned more on a
  # 2-core CPU (BENCHMARKS.md); batch 4 for 1.5× the steps learned less. Seen-prompt accuracy
  # rises with the steps (AdamW 3600: 0.76, 7200: 0.94; BENCHMARKS.md).
  c.data.batch_size = 8 if tiny else 512
  # Turn clips (story-mode training): this share of the video examples is a clip whose object
  # turns after its first turn_context_frames frames, captioned with the new direction; those
  # frames' time steps are given (never masked), as the re-encoded context of a story
  # continuation is. Not in the paper (its stories come from plain clips); 0 = off. tiny: 0.2
  # (with Muon, two draws each way: story segments 0.76-0.78 -> 0.81-0.86, mean boundary jump
  # ~4 -> ~2.5 px, held-out unchanged; BENCHMARKS.md).
  c.data.turn_rate = 0.2 if tiny else 0.0
  c.data.turn_context_frames = 5
  c.data.seed = 1                    # a different stream from stage 1's
  c.data.prefetch = 4
  c.data.pretokenized = ""           # a directory written by `python -m phenaki_jax.tokenize`

  # tiny: Muon (optim.py; AdamW on embeddings, head and norms) reaches AdamW's 4000-step loss in
  # about half the steps. Orthogonalising the attention projections per head (muon_per_head)
  # makes a step ~19% cheaper than whole-matrix Muon (Newton–Schulz on small matrices dominates
  # at this width): 5600 steps ≈ 17.5 min on a quiet 2-core CPU, what the shorter Muon stage 1
  # leaves in the demo's 30 min. Peak lr 4e-3 (was AdamW's 1e-3): on the lr-8e-3 C-ViViT (two
  # draws each way) seen 0.95 -> 0.97-1.00, held-out 0.87-0.93 -> 0.97-1.00, mean story boundary
  # jump 1.17-1.25 -> 1.08 px, boundaries over 2 px 5-8% -> 1%; a third draw 0.99, 0.95, 1.16 px,
  # 2%. 8e-3 diverged (BENCHMARKS.md, fifteenth session).
  c.total_steps = 5600 if tiny else 4_000_000
  c.max_train_seconds = 0.0
  c.optim = (optim.default_config(name="muon", lr=4e-3, warmup_steps=200, decay_steps=5600,
                                  end_lr_fraction=0.05, weight_decay=1e-4,
                                  muon_per_head=True) if tiny else
             optim.default_config(lr=1e-4, warmup_steps=10_000, decay_steps=4_000_000))
  # An exponential moving average of the parameters (state["ema_params"]), what the sampler
  # uses when on; 0 = off.
  c.ema_decay = 0.0
  c.log_every = 50
  c.eval_every = 5600 if tiny else 10_000
  c.checkpoint_every = 1000 if tiny else 5000
  c.keep_checkpoints = 3
  c.stop_after_steps = 0
  # A finished run counts the codes of this many training examples at the first and at later
  # time steps (workdir/code_support.npz) for the sampler's restrict_codes; 0 = skip.
  c.code_support_clips = 2048

  # Samples written at eval steps (and the defaults of the sampler built from this run).
  # cfg_support > 0 samples, under guidance, only tokens the conditional model gives at least
  # that fraction of its top probability (decode.py). On Shapes 0.01 removes a speckled first
  # frame that guidance causes, but read-back shape accuracy fell (0.62 vs 0.74), so it is off.
  # restrict_codes: sample at the first time step only codes seen there in training, and at
  # later steps only codes seen there (workdir/code_support.npz; no file = no restriction).
  # tiny: 24 decoding steps (the demo's models, full Shapes evaluation: seen 0.81 / held-out
  # 0.75 / story segments 0.61 against 0.74 / 0.58 / 0.69 at 12 steps; BENCHMARKS.md).
  # top_k: sample each token from its k most likely codes (0 = all). tiny: 3 — sampling the
  # tail of every token independently broke object outlines; seen prompts 0.89 -> 0.93 and
  # 0.88 -> 0.91 (two MaskGIT draws, 4 seeds each), held-out and image-only up too.
  # cfg_scale: tiny 2 (was 3) — with top-k 3 and the turn-clip data, guidance 3 no longer paid:
  # at 2, seen 0.926 -> 0.946 and 0.910 -> 0.952, held-out 0.906 -> 0.948 and 0.906 -> 0.917,
  # image-only 0.880 -> 0.917 and 0.870 -> 0.906 (the demo's two MaskGIT draws, 4 seeds each),
  # and generated clips stutter less between tubelets (BENCHMARKS.md, fourteenth session).
  # continue_cfg_scale: guidance of story segments after the first (None = cfg_scale). tiny: 1
  # (no guidance): under guidance the unconditional branch continues the context's motion, so
  # cond − uncond, scaled by 3, pushed the first new frame back along the old direction and past
  # the new one; mean boundary jump 2.2 -> 1.7 px and 2.0 -> 1.6 px (two draws; BENCHMARKS.md).
  # continue_stepwise: a continuation decodes its new time steps one after another (each with
  # the later ones [MASK]) instead of all at once. tiny: on — story boundaries over 2 px 32% ->
  # 16% and 22% -> 18%, mean jump 1.70 -> 1.48 and 1.62 -> 1.44 px (the demo's two MaskGIT
  # draws, 8 seeds; BENCHMARKS.md, thirteenth session). The paper decodes a segment at once.
  # continue_candidates: a continuation samples N candidates (one batch) and keeps the one with
  # the least squared pixel difference to the others (minimum Bayes risk). tiny: 4 — story
  # boundaries over 2 px (the issue-6 limit) 12 -> 5 of 576 (six MaskGITs, 4 seeds each), the
  # worst 2.53 -> 2.27 px, segment accuracy unchanged; 8 candidates did no better than 4
  # (BENCHMARKS.md, seventeenth session). Costs 4× a continuation's sampling; image-to-video
  # samples once (no gain measured there).
  c.sample = ml_collections.ConfigDict(dict(
      steps=24 if tiny else 12, cfg_scale=2.0 if tiny else 3.0, temperature=1.0,
      choice_temperature=4.5, top_k=3 if tiny else 0, top_p=1.0, cfg_support=0.0,
      restrict_codes=True, num_videos=4, continue_cfg_scale=1.0 if tiny else None,
      continue_stepwise=tiny, continue_candidates=4 if tiny else 1))
  return c.lock()
