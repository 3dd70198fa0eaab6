"""CLIP towers: parity with transformers' CLIPModel (random weights, tiny config, saved with
save_pretrained and read by our loader), preprocessing parity with CLIPImageProcessor (PIL),
tokenisation parity with CLIPTokenizer, the score's definition, sizes and errors."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest
import torch  # the [torch] extra, which `make test` installs
import transformers

from phenaki_jax.models import clip

TOL = 1e-4
CONTEXT = 16
CAPTIONS = [
  "a red circle",
  "",
  "A Cyan SQUARE moves left, then right!",
  "red red red red red red red red red red red red red red red red red red red",  # truncated
]


def make_tokenizer_vocab() -> tuple[dict, list]:
  """A byte-level BPE vocabulary in CLIP's format (words end in </w>), specials first."""
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
  for token in alphabet + [c + "</w>" for c in alphabet] + ["re", "red</w>", "ci", "cir"]:
    vocab[token] = len(vocab)
  return vocab, [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r")]


def tiny_config(vocab_size: int, eos_token_id: int) -> transformers.CLIPConfig:
  return transformers.CLIPConfig(
    text_config=dict(
      vocab_size=vocab_size,
      hidden_size=24,
      intermediate_size=40,
      num_hidden_layers=2,
      num_attention_heads=3,
      max_position_embeddings=CONTEXT,
      bos_token_id=0,
      pad_token_id=1,
      eos_token_id=eos_token_id,
    ),
    vision_config=dict(
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=32,
      patch_size=8,
    ),
    projection_dim=20,
  )


def random_reference(config, seed: int) -> transformers.CLIPModel:
  """A CLIPModel with random weights, LayerNorms and embeddings perturbed away from 1 and 0."""
  torch.manual_seed(seed)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.LayerNorm):
        torch.nn.init.uniform_(m.weight, 0.5, 1.5)
        torch.nn.init.normal_(m.bias, 0.0, 0.1)
    torch.nn.init.normal_(model.vision_model.embeddings.class_embedding, 0.0, 0.5)
  return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(directory, reference): config.json + model.safetensors + tokenizer.json, eos id 1."""
  d = tmp_path_factory.mktemp("clip")
  vocab, merges = make_tokenizer_vocab()
  tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
  tokenizer.save_pretrained(str(d))
  reference = random_reference(tiny_config(len(vocab), eos_token_id=1), seed=0)
  reference.save_pretrained(str(d))
  return d, reference


@pytest.fixture(scope="module")
def loaded(checkpoint):
  return clip.load_clip(str(checkpoint[0]))


def torch_features(reference, **inputs) -> np.ndarray:
  get = reference.get_image_features if "pixel_values" in inputs else reference.get_text_features
  with torch.no_grad():
    out = get(**{k: torch.as_tensor(v) for k, v in inputs.items()})
  return getattr(out, "pooler_output", out).numpy()  # transformers 5 returns an output object


def test_image_parity(checkpoint, loaded):
  _, reference = checkpoint
  model, params = loaded
  assert (model.image_size, model.patch_size, model.vision_depth, model.embed_dim) == (32, 8, 2, 20)
  pixels = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  want = torch_features(reference, pixel_values=pixels.transpose(0, 3, 1, 2))
  got = np.asarray(
    jax.jit(model.apply, static_argnames="method")(
      {"params": params}, pixels, method="encode_image"
    )
  )
  err = np.abs(got - want).max()
  assert err <= TOL, f"image: max |ours - transformers| = {err:.2e}"
  assert np.abs(want).max() > 0.5

  # The whole path from uint8 images, with the processor at this model's size.
  images = [
    np.random.default_rng(i).integers(0, 256, s, dtype=np.uint8)
    for i, s in enumerate([(40, 50, 3), (64, 32, 3)])
  ]
  processor = transformers.CLIPImageProcessorPil(
    size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
  )
  pixel_values = processor(images=images, return_tensors="np")["pixel_values"]
  want = torch_features(reference, pixel_values=pixel_values)
  got = clip.clip_image_features(model, params, images)
  assert np.abs(got - want).max() <= TOL


def test_text_parity_through_the_tokenizer(checkpoint, loaded):
  d, reference = checkpoint
  model, params = loaded
  assert model.eos_token_id == 1  # explicit: the first end-of-text token, not the largest id
  ids = clip.Tokenizer(str(d), CONTEXT)(CAPTIONS)
  hf = transformers.CLIPTokenizer.from_pretrained(str(d))
  want_ids = hf(CAPTIONS, padding="max_length", max_length=CONTEXT, truncation=True)["input_ids"]
  np.testing.assert_array_equal(ids, np.asarray(want_ids))
  assert (ids[:, 0] == 0).all() and ids[3, -1] == 1 and ids[1, :3].tolist() == [0, 1, 1]
  assert (ids[[0, 2, 3]].max(axis=1) > 1).all()  # the largest id is not eos: argmax would differ
  mask = np.cumsum(ids == 1, axis=1) <= 1  # up to the first eos; padding after it
  want = torch_features(
    reference, input_ids=ids.astype(np.int64), attention_mask=mask.astype(np.int64)
  )
  got = clip.clip_text_features(model, params, ids)
  err = np.abs(got - want).max()
  assert err <= TOL, f"text: max |ours - transformers| = {err:.2e}"
  # Padding after the end of text is unseen (causal): shorter contexts give the same features.
  short = 1 + np.argmax(ids[:2] == 1, axis=1).max()  # rows 0 and 1 end by here
  np.testing.assert_allclose(
    clip.clip_text_features(model, params, ids[:2, :short]), got[:2], atol=1e-5
  )


def test_legacy_eos_config_pools_at_the_largest_id(tmp_path):
  """OpenAI's configs say eos_token_id 2; transformers then pools at argmax(ids), and so do we."""
  reference = random_reference(tiny_config(300, eos_token_id=2), seed=1)
  reference.save_pretrained(str(tmp_path))
  model, params = clip.load_clip(str(tmp_path))
  assert model.eos_token_id is None
  ids = np.random.default_rng(0).integers(3, 250, (3, 10)).astype(np.int32)
  ids[0, 4], ids[1, 9], ids[2, 0] = 299, 299, 299
  want = torch_features(reference, input_ids=ids.astype(np.int64))
  got = clip.clip_text_features(model, params, ids)
  assert np.abs(got - want).max() <= TOL


@pytest.mark.parametrize("shape", [(300, 260), (180, 400), (224, 224), (225, 601)])
def test_preprocessing_matches_clip_image_processor(shape):
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
  want = transformers.CLIPImageProcessorPil()(images=[image], return_tensors="np")["pixel_values"]
  got = clip.clip_preprocess(image[None])
  assert got.shape == (1, 224, 224, 3)
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-6)
  assert clip.PROTOCOL["mean"] == tuple(transformers.CLIPImageProcessorPil().image_mean)
  assert clip.PROTOCOL["std"] == tuple(transformers.CLIPImageProcessorPil().image_std)


def test_clip_score_definition(checkpoint, loaded):
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))
  text[0] = -image[0]  # cos -1: clamped to 0
  text[1] = 3.0 * image[1]  # cos 1: 100, whatever the norms
  cos = torch.nn.functional.cosine_similarity(torch.tensor(image), torch.tensor(text)).numpy()
  score = clip.clip_score(image, text)
  np.testing.assert_allclose(score, 100 * np.maximum(cos, 0), atol=1e-9)
  assert score[0] == 0 and abs(score[1] - 100) < 1e-9
  # Against transformers' logits: logits_per_image / exp(logit_scale) is the cosine matrix.
  d, reference = checkpoint
  model, params = loaded
  ids = clip.Tokenizer(str(d), CONTEXT)(CAPTIONS[:2])
  images = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    out = reference(
      input_ids=torch.as_tensor(ids.astype(np.int64)), pixel_values=torch.as_tensor(images)
    )
    cosines = (out.logits_per_image / reference.logit_scale.exp()).numpy()
  ours = clip.clip_score(
    np.asarray(
      model.apply({"params": params}, images.transpose(0, 2, 3, 1), method="encode_image")
    ),
    clip.clip_text_features(model, params, ids),
  )
  np.testing.assert_allclose(ours, 100 * np.maximum(np.diag(cosines), 0), atol=1e-3)
  np.testing.assert_allclose(params["logit_scale"], reference.logit_scale.item(), rtol=1e-6)


def test_sizes_and_config():
  shapes = clip.expected_shapes(clip.get_model("B/32"))
  assert (
    sum(int(np.prod(s)) for s in shapes.values()) == 151_277_313
  )  # openai/clip-vit-base-patch32
  assert shapes[("vision", "patch_embed", "kernel")] == (32, 32, 3, 768)
  assert shapes[("text", "position_embedding")] == (77, 512)
  defaults = clip.model_from_hf_config({"text_config": {"eos_token_id": 2}})
  assert defaults == clip.get_model("B/32")  # transformers' defaults are B/32's
  config = json.loads(tiny_config(300, 1).to_json_string())
  assert clip.model_from_hf_config(config).text_mlp_dim == 40


def test_errors(checkpoint, tmp_path):
  d, _ = checkpoint
  model, _ = clip.load_clip(str(d))
  deeper = model.clone(vision_depth=3)
  with pytest.raises(ValueError) as e:
    clip.load_clip(str(d), deeper)
  assert (
    "missing tensor 'vision_model.encoder.layers.2.self_attn.q_proj.weight' "
    "(expected shape (32, 32))" in str(e.value)
  )
  with pytest.raises(
    ValueError, match=r"'visual_projection.weight' has shape \(20, 32\), expected \(24, 32\)"
  ):
    clip.load_clip(str(d), model.clone(embed_dim=24))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    clip.load_clip(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    clip.Tokenizer(str(tmp_path))
  with pytest.raises(ValueError, match="unknown CLIP size"):
    clip.get_model("H/14")
  with pytest.raises(ValueError, match="uint8"):
    clip.clip_preprocess(np.zeros((1, 32, 32, 3), np.float32))


def test_clip_score_from_the_cli(checkpoint):
  """`python -m phenaki_jax.evaluate clip` on captioned Shapes clips with the random checkpoint."""
  import conftest  # pylint: disable=g-import-not-at-top

  d, _ = checkpoint
  proc = conftest.run_module(
    "phenaki_jax.evaluate",
    "clip",
    f"--clip_dir={d}",
    "--videos=shapes:eval",
    "--num_videos=2",
    "--num_frames=3",
    "--resolution=32",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout[proc.stdout.index("{") :])
  assert 0 <= result["clip_score"] <= 100 and result["num_frames"] == 6
  assert result["protocol"] == json.loads(json.dumps(clip.PROTOCOL))


def test_the_maskgit_evaluation_scores_fvd_and_clip(checkpoint, tiny_sampler, tiny_maskgit_dir):
  """The stage-2 trainer's evaluation (`trainers.maskgit.eval_metrics`): FVD of samples for
  fixed captions against their real clips (cached reference) and, given a CLIP checkpoint
  directory, their CLIP score."""
  import tempfile  # pylint: disable=g-import-not-at-top

  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import shapes  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import i3d  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import maskgit  # pylint: disable=g-import-not-at-top

  d, _ = checkpoint
  config = config_io.from_workdir(tiny_maskgit_dir)
  s = tiny_sampler
  spec = shapes.ShapesSpec(resolution=s.tokenizer.image_size, num_frames=s.max_frames)
  examples = [shapes.video_example(spec, 0, i, split="eval") for i in range(3)]
  model_clip = clip.load_clip(str(d))
  setup = {
    "videos": np.stack([e["video"] for e in examples]),
    "captions": [e["caption"] for e in examples],
    "i3d": i3d.load_i3d_params(),
    "clip": model_clip,
    "clip_tokenizer": clip.Tokenizer(str(d), context_length=model_clip[0].context_length),
  }
  with tempfile.TemporaryDirectory() as workdir:
    args = (workdir, 10, config, s.tokenizer, s.model, s.params, s.text_encoder, setup)
    scores = maskgit.eval_metrics(*args)
    assert os.path.exists(os.path.join(workdir, "fvd_reference.npz"))
    again = maskgit.eval_metrics(*args)  # the reference from its cache
  assert np.isfinite(scores["eval/fvd"]) and scores["eval/fvd"] > 0
  assert 0 <= scores["eval/clip_score"] <= 100
  assert again == pytest.approx(scores, rel=1e-6)
