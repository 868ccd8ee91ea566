"""TextEncoder: byte-exact prompts, SAN's template averaging against a naive loop, and the two caches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patseg.models.clip.open_clip_loader import create_open_clip
from patseg.models.clip.text_encoder import TextEncoder
from patseg.resources import load_templates
from patseg.weights.text_cache import DiskEmbeddingCache

NAMES = ["road, route", "toilet, can, commode, crapper, pot, potty, stool, throne", "building-other"]
TEMPLATES = load_templates("san_vild")


def _encoder(cache_dir=None, seed=0, name="patseg-tiny-ViT"):
    torch.manual_seed(seed)
    model, tokenizer = create_open_clip(name, quick_gelu=True, weights=None)
    model.visual = None
    cache = None if cache_dir is None else DiskEmbeddingCache(cache_dir)
    return TextEncoder(model, tokenizer, cache=cache, cache_key=name), tokenizer


def cache_file(enc: TextEncoder, names, templates):
    return enc.cache.path(enc.cache_key, names, templates)


class CountingTower:
    """Wraps ``encode_text`` of the encoder's model, counting calls and recording nothing else."""

    def __init__(self, enc: TextEncoder) -> None:
        self.calls = 0
        self.inner = enc.clip.encode_text
        enc.clip.encode_text = self

    def __call__(self, tokens, normalize: bool = False):
        self.calls += 1
        return self.inner(tokens, normalize=normalize)


def test_prompts_are_templates_formatted_byte_exactly():
    enc, tokenizer = _encoder()
    seen: list[str] = []

    def recording(texts):
        seen.extend(texts)
        return tokenizer(texts)

    enc.tokenizer = recording
    enc(NAMES, TEMPLATES)
    assert seen == [t.format(n) for t in TEMPLATES for n in NAMES]
    assert "This is a photo of a road, route" in seen  # template 2 has no trailing period in SAN's list
    assert "There is a large building-other in the scene." in seen


@torch.no_grad()
def test_output_equals_naive_per_template_loop_and_is_normalised():
    enc, tokenizer = _encoder()
    got = enc(NAMES, TEMPLATES)
    assert got.shape == (3, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    rows = []
    for name in NAMES:
        per_template = [
            F.normalize(enc.clip.encode_text(tokenizer([t.format(name)]))[0].double(), dim=0) for t in TEMPLATES
        ]
        rows.append(F.normalize(torch.stack(per_template).mean(0), dim=0))
    torch.testing.assert_close(got.double(), torch.stack(rows), atol=1e-6, rtol=1e-6)
    single = enc(NAMES[:1], TEMPLATES[:1])  # one template: exactly CLIP's normalised text embedding
    torch.testing.assert_close(
        single,
        F.normalize(enc.clip.encode_text(tokenizer([TEMPLATES[0].format(NAMES[0])])), dim=-1),
        atol=1e-6,
        rtol=1e-6,
    )


def test_disk_cache_hit_skips_the_text_tower(tmp_path):
    first, _ = _encoder(tmp_path)
    ref = first(NAMES, TEMPLATES)
    assert cache_file(first, NAMES, TEMPLATES).is_file()
    second, _ = _encoder(tmp_path)  # same seed -> same weights -> same weights digest
    counter = CountingTower(second)
    got = second(NAMES, TEMPLATES)
    assert counter.calls == 0
    assert torch.equal(got, ref)
    second(NAMES, TEMPLATES)  # memory hit
    assert counter.calls == 0


def test_cache_key_changes_with_names_templates_and_weights(tmp_path):
    enc, _ = _encoder(tmp_path)
    base = cache_file(enc, NAMES, TEMPLATES)
    assert cache_file(enc, NAMES[:2], TEMPLATES) != base
    assert cache_file(enc, NAMES, TEMPLATES[:3]) != base
    assert cache_file(enc, list(reversed(NAMES)), TEMPLATES) != base
    other, _ = _encoder(tmp_path, seed=1)
    assert cache_file(other, NAMES, TEMPLATES) != base
    enc(NAMES, TEMPLATES)
    counter = CountingTower(enc)
    enc(NAMES[:2], TEMPLATES)  # a new vocabulary runs the tower
    assert counter.calls == len(TEMPLATES)


def test_frozen_eval_mode_and_logit_scale():
    enc, _ = _encoder()
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.clip.training
    assert enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init; OpenAI weights give 100
    model, tokenizer = create_open_clip("patseg-tiny-ViT", quick_gelu=True, weights=None)
    with pytest.raises(ValueError, match="visual"):
        TextEncoder(model, tokenizer, cache=None, cache_key="x")


def test_cache_follows_weights_loaded_after_construction(tmp_path):
    """Loading other weights into a built model must not serve the embeddings of the old weights."""
    from patseg.models.clip.backbone import load_clip

    _, text_a = load_clip(
        "patseg-tiny-ViT",
        quick_gelu=False,
        weights=None,
        taps=(0, 2, 3, 4),
        rec_start=4,
        cache=DiskEmbeddingCache(tmp_path),
    )
    torch.manual_seed(123)
    _, text_b = load_clip(
        "patseg-tiny-ViT",
        quick_gelu=False,
        weights=None,
        taps=(0, 2, 3, 4),
        rec_start=4,
        cache=DiskEmbeddingCache(tmp_path),
    )
    names, templates = ["red circle", "grass"], ["a photo of a {}."]
    emb_a = text_a(names, templates).clone()
    emb_b = text_b(names, templates).clone()
    assert not torch.allclose(emb_a, emb_b)
    text_b.load_state_dict(text_a.state_dict())
    torch.testing.assert_close(text_b(names, templates), emb_a)


def test_prime_serves_normalised_embeddings_without_the_tower():
    enc, _ = _encoder()
    counter = CountingTower(enc)
    raw = 5 * torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    enc.prime(NAMES, TEMPLATES, raw)
    got = enc(NAMES, TEMPLATES)
    assert counter.calls == 0
    expected = torch.stack([row / torch.sqrt(sum(v * v for v in row.double())) for row in raw.double()])
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)
    for shape in ((2, 64), (3, 32), (3, 64, 1)):
        with pytest.raises(ValueError, match=r"\(C, D\)"):
            enc.prime(NAMES, TEMPLATES, torch.randn(shape))
    enc.forget_weights()  # primed entries go with the weights, like encoded ones
    assert enc(NAMES, TEMPLATES).shape == (3, 64) and counter.calls == len(TEMPLATES)
