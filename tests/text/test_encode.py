"""Fast exact text encoding: equality with open_clip's encode_text, detection and fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vild.errors import VocabularyError
from vild.text.encode import TextEncoder
from vild.text.prefix import plan_prefix_groups
from vild.text.tower import inspect_text_tower


def _full_context_prompt(tokenizer, n_tokens: int) -> str:
    """A prompt of exactly `n_tokens` tokens including <sot> and <eot>."""
    for k in range(100):
        p = "a photo of" + " zz" * k + "."
        if len(tokenizer.encode(p)) + 2 == n_tokens:
            return p
    raise AssertionError("could not build the prompt")


def _mixed_prompts(tokenizer) -> list[str]:
    names = ["cat", "red traffic light", "orange", "bow (weapon)", "東京 café", "x" * 30,
             "a b c d e f g h i j k l m n o p"]
    templates = ["This is a photo of {article} {}.", "This is a photo of the small {}.",
                 "There is {article} {} in the scene.", "itap of my {}."]
    from vild.text.prompts import format_prompt

    prompts = [format_prompt(t, n) for t in templates for n in names]
    prompts += [_full_context_prompt(tokenizer, 77), _full_context_prompt(tokenizer, 60), "!", ""]
    return prompts


@pytest.fixture(scope="module")
def vit_b32():
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", pretrained=None).eval()


def test_fast_path_equals_encode_text_on_vit_b32(vit_b32, tokenizer):
    prompts = _mixed_prompts(tokenizer)
    lengths = [len(tokenizer.encode(p)) + 2 for p in prompts]
    assert max(lengths) == 77 and min(lengths) == 2 and len(prompts) == 32
    with torch.inference_mode():
        ref = vit_b32.encode_text(tokenizer(prompts)).float()
    enc = TextEncoder(vit_b32, tokenizer, batch_size=16)
    assert enc.mode == "prefix", enc.fallback_reason
    out = enc.encode(prompts)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-5
    trunc = TextEncoder(vit_b32, tokenizer, batch_size=16, mode="truncate", verify=False)
    assert float((trunc.encode(prompts) - ref).abs().max()) <= 1e-5


def test_prefix_sharing_actually_groups_template_prompts(tokenizer, models):
    from vild.text.prompts import format_prompt, resolve_templates

    names = ["apple", "banana", "water bottle", "orange", "tennis ball", "tennis racket"] * 1
    prompts = [format_prompt(t, n) for t in resolve_templates("vild") for n in names]
    enc = TextEncoder(models.tiny_clip(), tokenizer, verify=False)
    tokens, _ = enc.tokenize(prompts)
    lengths = (tokens.argmax(-1) + 1).numpy()
    seqs = tokens[:, : lengths.max()].numpy().astype(np.int64)
    seqs[np.arange(lengths.max())[None] >= lengths[:, None]] = -1
    groups = plan_prefix_groups(seqs, lengths)
    covered = np.sort(np.concatenate([rows for _, rows in groups]))
    assert np.array_equal(covered, np.arange(len(prompts)))  # a partition
    for p, rows in groups:
        assert (lengths[rows] - 1 >= p).all()
        assert (seqs[rows, :p] == seqs[rows[0], :p]).all()
    work = sum(int((lengths[rows] - p).sum()) for p, rows in groups)
    assert work < 0.6 * lengths.sum()  # most of every prompt is a shared prefix


def test_tiny_models_all_modes_exact(tokenizer, models):
    prompts = _mixed_prompts(tokenizer)
    for model in (models.tiny_clip(1), models.tiny_custom_text_clip(2), models.tiny_clip(3, pool_type="eos", eos_id=49407),
                  models.tiny_clip(4, ls_init_value=0.5)):
        with torch.inference_mode():
            ref = model.encode_text(tokenizer(prompts)).float()
        for mode in ("auto", "truncate"):
            enc = TextEncoder(model, tokenizer, mode=mode, batch_size=8)
            assert enc.mode in ("prefix", "truncate"), enc.fallback_reason
            assert float((enc.encode(prompts) - ref).abs().max()) <= 1e-5


def test_custom_blocks_use_truncation_only(tokenizer, models):
    model = models.tiny_clip(5, qk_norm=True)  # CustomResidualAttentionBlock
    enc = TextEncoder(model, tokenizer)
    assert enc.mode == "truncate"
    prompts = _mixed_prompts(tokenizer)[:12]
    with torch.inference_mode():
        ref = model.encode_text(tokenizer(prompts)).float()
    assert float((enc.encode(prompts) - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize(
    "overrides,why",
    [({"pool_type": "last"}, "pool type"), ({"no_causal_mask": True}, "not causal"),
     ({"embed_cls": True}, "CLS")],
)
def test_unsupported_towers_fall_back_to_encode_text(tokenizer, models, overrides, why):
    model = models.tiny_custom_text_clip(6, **overrides) if "embed_cls" in overrides else models.tiny_clip(6, **overrides)
    tower, reason = inspect_text_tower(model)
    assert tower is None and why in reason
    enc = TextEncoder(model, tokenizer)
    assert enc.mode == "reference"
    prompts = ["This is a photo of a cat.", "itap of my dog."]
    with torch.inference_mode():
        ref = model.encode_text(tokenizer(prompts)).float()
    assert torch.equal(enc.encode(prompts), ref)


def test_subclass_overriding_encode_text_is_not_guessed(tokenizer, models):
    from open_clip.model import CLIP

    class Odd(CLIP):
        def encode_text(self, text, normalize=False):
            return super().encode_text(text, normalize) * 2

    model = models.tiny_clip(7)
    model.__class__ = Odd
    enc = TextEncoder(model, tokenizer)
    assert enc.mode == "reference" and "overrides encode_text" in enc.fallback_reason


def test_self_check_catches_a_wrong_fast_path(tokenizer, models, monkeypatch):
    import vild.text.prefix as prefix

    real = prefix.kv_block

    def wrong(blk, x, past, mask, only):
        y, kv = real(blk, x, past, mask, only)
        return y + 0.5 * y.flip(-1), kv  # not a constant shift: LayerNorm would undo it

    monkeypatch.setattr(prefix, "kv_block", wrong)
    enc = TextEncoder(models.tiny_clip(8), tokenizer)
    assert enc.mode == "reference" and "differs" in enc.fallback_reason


def test_prompt_longer_than_context_is_an_error(tokenizer, models):
    enc = TextEncoder(models.tiny_clip(), tokenizer)
    ok = _full_context_prompt(tokenizer, 77)
    too_long = _full_context_prompt(tokenizer, 78)
    enc.encode([ok])
    with pytest.raises(VocabularyError, match="78 tokens.*context is 77"):
        enc.encode([ok, too_long])


def test_empty_input(tokenizer, models):
    out = TextEncoder(models.tiny_clip(), tokenizer).encode([])
    assert out.shape == (0, 16)


def test_trimmed_training_encoder_matches_encode_text_with_gradients(tokenizer, models):
    from vild.text.tower import encode_text_trimmed

    prompts = ["a red star.", "the cyan heart with a dark outline on a cluttered background.", "!"]
    tokens = tokenizer(prompts)
    for model in (models.tiny_clip(11), models.tiny_custom_text_clip(12), models.tiny_clip(13, pool_type="last")):
        model.train()
        ref = model.encode_text(tokens).float()
        ref.pow(2).sum().backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        out = encode_text_trimmed(model, tokens)
        # fp32 sums in another order differ by a few ulps of the largest term: tolerances are
        # relative to each tensor's magnitude (1e-5 ~ 80 ulps), never absolute.
        assert float((out - ref).detach().abs().max()) <= 1e-5 * max(1.0, float(ref.detach().abs().max()))
        out.pow(2).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads.keys() == ref_grads.keys()
        for n, g in grads.items():
            scale = max(1.0, float(ref_grads[n].abs().max()))
            assert float((g - ref_grads[n]).abs().max()) <= 1e-5 * scale, n
