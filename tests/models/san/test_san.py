"""SAN, the baseline and PAT's semantic branch: a tiny model overfits one batch, semantic inference equals a naive
loop, eval runs only the last block set, scores are sane and every trainable tensor learns."""

from __future__ import annotations

import pytest
import torch

from naive import semantic_inference as naive_semantic_inference
from naive import toy_batch, unit_rows
from patseg.build import build_model
from patseg.models.san.model import SAN, SegPrediction, semantic_inference


@pytest.fixture
def san() -> SAN:
    torch.manual_seed(0)
    return build_model("san_tiny")


def test_tiny_san_overfits_one_batch(san: SAN) -> None:
    """AdamW lr 1e-3 for 30 steps on two 64x64 images: the set loss (main + side3 sets) falls to under 40%."""
    images, labels = toy_batch()
    emb = unit_rows(4, san.clip.out_dim)
    san.train()
    opt = torch.optim.AdamW([p for p in san.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        out = san.training_losses(images, labels, emb)
        assert set(out.losses) == {
            "loss_ce",
            "loss_mask",
            "loss_dice",
            "loss_ce_side3",
            "loss_mask_side3",
            "loss_dice_side3",
        }
        opt.zero_grad()
        out.total.backward()
        opt.step()
        history.append(float(out.total.detach()))
    print(f"\nSAN tiny set loss: step 0 {history[0]:.2f}, step 15 {history[15]:.2f}, step 29 {history[-1]:.2f}")
    assert history[-1] < 0.4 * history[0]
    assert min(history[-5:]) < min(history[:5])


def test_semantic_inference_equals_naive_loop() -> None:
    masks = torch.randn(2, 3, 4, 5) * 3
    logits = torch.randn(2, 3, 6) * 2
    pred = SegPrediction(masks=masks, logits=logits)
    expected = naive_semantic_inference(masks, logits, (7, 9))
    for chunk in (1, 2, 25):  # chunking over queries must not change the sum
        got = semantic_inference(pred, (7, 9), query_chunk=chunk)
        assert got.shape == (2, 5, 7, 9)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_semantic_inference_drops_no_object_after_softmax() -> None:
    """A query sure of "no object" contributes nothing, however confident its mask."""
    masks = torch.full((1, 1, 2, 2), 20.0)
    logits = torch.tensor([[[0.0, 0.0, 50.0]]])
    scores = semantic_inference(SegPrediction(masks=masks, logits=logits), (4, 4))
    assert float(scores.abs().max()) < 1e-20


def test_eval_forward_runs_only_the_last_block_set(san: SAN, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = toy_batch()
    emb = unit_rows(4, san.clip.out_dim)
    calls = {"decoder": 0, "recognize": 0}
    recorded: list[set[int]] = []
    san.mask_decoder.register_forward_hook(lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1))
    san.side.register_forward_hook(lambda _m, _i, out: recorded.append(set(out.patches)))
    recognize = san.clip.recognize

    def counting_recognize(*args, **kwargs):
        calls["recognize"] += 1
        return recognize(*args, **kwargs)

    monkeypatch.setattr(san.clip, "recognize", counting_recognize)
    with torch.no_grad():
        train_out = san.train()(images, emb)
        assert calls == {"decoder": 2, "recognize": 2} and recorded[-1] == {3, 4}
        assert set(train_out.aux) == {"side3"}
        eval_out = san.eval()(images, emb)
    assert calls == {"decoder": 3, "recognize": 3} and recorded[-1] == {4}
    assert eval_out.aux == {}
    # the main set is block 4's in both modes (no dropout anywhere): same values
    torch.testing.assert_close(eval_out.main.masks, train_out.main.masks)
    torch.testing.assert_close(eval_out.main.logits, train_out.main.logits)
    assert not torch.allclose(train_out.aux["side3"].masks, train_out.main.masks)


def test_eval_scores_of_the_model_are_sane(san: SAN) -> None:
    images, _ = toy_batch()
    emb = unit_rows(5, san.clip.out_dim)
    with torch.no_grad():
        main = san.eval()(images, emb).main
    scores = semantic_inference(main, (64, 64))
    assert scores.shape == (2, 5, 64, 64)
    assert torch.isfinite(scores).all() and float(scores.min()) >= 0
    # sum_c score <= sum_q sigmoid(mask) <= Q: probabilities over classes and no-object sum to one per query
    assert float(scores.sum(1).max()) <= san.side.num_queries
    expected = naive_semantic_inference(main.masks, main.logits, (64, 64))
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)


def test_prepare_training_accepts_the_lpips_file_and_changes_nothing(san: SAN) -> None:
    before = {k: v.clone() for k, v in san.state_dict().items()}
    san.prepare_training(lpips_vgg_weights="no/such/file.pth")  # PAT's file; SAN has no perceptual loss
    san.prepare_training()
    after = san.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_classify_is_scaled_cosine_with_no_object_last(san: SAN) -> None:
    emb = unit_rows(3, san.clip.out_dim)
    queries = unit_rows(4, san.clip.out_dim, seed=1).unsqueeze(0)
    logits = san.classify(queries, emb)
    assert logits.shape == (1, 4, 4)
    bg = san.bg_embed.detach()[0] / san.bg_embed.detach()[0].norm()
    classifier = torch.cat([emb, bg[None]], 0).double()
    expected = float(san.text.logit_scale) * queries[0].double() @ classifier.t()
    torch.testing.assert_close(logits[0].detach().double(), expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_trainable_parameter(san: SAN) -> None:
    images, labels = toy_batch()
    san.train().training_losses(images, labels, unit_rows(4, san.clip.out_dim)).total.backward()
    for name, p in san.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("shape, grid", [((7, 16, 24), (4, 3)), ((5, 9, 10), (4, 3)), ((3, 8, 8), (8, 8))])
def test_max_pool_to_equals_adaptive_max_pooling(shape, grid) -> None:
    """Divisible grids take the rows-then-columns path, the others the pooling kernel: the maxima are the same."""
    from patseg.models.san.model import max_pool_to

    maps = torch.randn(*shape)
    expected = torch.nn.functional.adaptive_max_pool2d(maps, grid)
    assert torch.equal(max_pool_to(maps, grid), expected)
