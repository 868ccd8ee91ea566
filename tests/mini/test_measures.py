import math

import numpy as np
import pytest

from patseg.mini import measures
from patseg.mini.measures import codebook_usage, frechet_distance, psnr

# ---------------------------------------------------------------------------------------------------- references


def naive_psnr(reference, estimate, peak):
    """Float64 loop: squared errors summed over every image, pixel and channel, then one logarithm."""
    ref = np.asarray(reference).reshape(-1, 3)
    est = np.asarray(estimate).reshape(-1, 3)
    total, count = 0.0, 0
    for i in range(ref.shape[0]):
        for ch in range(3):
            err = float(ref[i, ch]) - float(est[i, ch])
            total += err * err
            count += 1
    return 10.0 * math.log10(peak * peak / (total / count))


def naive_mean_cov(x):
    n, d = x.shape
    mean = [sum(float(x[i, j]) for i in range(n)) / n for j in range(d)]
    cov = np.zeros((d, d))
    for j in range(d):
        for k in range(d):
            cov[j, k] = sum((float(x[i, j]) - mean[j]) * (float(x[i, k]) - mean[k]) for i in range(n)) / (n - 1)
    return np.array(mean), cov


def eigen_frechet(a, b, root_eps=0.0):
    """Float64 reference: Tr((S_a S_b)^{1/2}) = Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}), a symmetric PSD matrix whose
    root's trace is the sum of the square roots of its eigenvalues (from eigh, tiny negatives clipped to 0).
    ``root_eps``: add eps * I to both covariances inside the root only, as the retry does."""
    mu_a, cov_a = naive_mean_cov(a)
    mu_b, cov_b = naive_mean_cov(b)
    offset = root_eps * np.eye(cov_a.shape[0])
    w, v = np.linalg.eigh(cov_a + offset)
    root_a = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ (cov_b + offset) @ root_a)
    tr_root = float(np.sum(np.sqrt(np.clip(inner, 0, None))))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_root)


def naive_std(values):
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# ---------------------------------------------------------------------------------------------------------- psnr


def test_psnr_matches_the_loop_reference_on_a_batch():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(3, 5, 4, 3), dtype=np.uint8)
    est = np.clip(ref.astype(int) + rng.integers(-20, 21, size=ref.shape), 0, 255).astype(np.uint8)
    assert psnr(ref, est) == pytest.approx(naive_psnr(ref, est, 255.0), rel=1e-12)
    assert psnr(ref[0], est[0], peak=1.0) == pytest.approx(naive_psnr(ref[0], est[0], 1.0), rel=1e-12)


def test_psnr_by_hand_without_uint8_wraparound():
    zeros = np.zeros((2, 2, 3), dtype=np.uint8)
    assert psnr(zeros, np.full_like(zeros, 16)) == pytest.approx(10 * math.log10(255**2 / 256))
    assert psnr(np.full_like(zeros, 16), zeros) == pytest.approx(10 * math.log10(255**2 / 256))  # 0 - 16 in uint8
    assert psnr(zeros, np.full_like(zeros, 255)) == pytest.approx(0.0, abs=1e-12)
    assert psnr(zeros, zeros) == math.inf


def test_psnr_pools_the_error_over_the_batch():
    # image 1 perfect, image 2 off by 10 everywhere: pooled MSE 50, not the mean of per-image PSNRs (inf).
    ref = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    est = ref.copy()
    est[1] = 10
    assert psnr(ref, est) == pytest.approx(10 * math.log10(255**2 / 50))


def test_psnr_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="3\\)"):
        psnr(np.zeros((4, 4)), np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------- frechet_distance


def test_frechet_one_dimensional_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, 2.0, size=(40, 1)), rng.normal(-1.0, 0.7, size=(25, 1))
    mu_a, s_a = naive_std([float(v) for v in a[:, 0]])
    mu_b, s_b = naive_std([float(v) for v in b[:, 0]])
    assert frechet_distance(a, b) == pytest.approx((mu_a - mu_b) ** 2 + (s_a - s_b) ** 2, rel=1e-10)


def full_grid(levels):
    """All combinations of the per-dimension levels: each dimension's sample covariance with the others is 0."""
    mesh = np.meshgrid(*[np.asarray(v, dtype=np.float64) for v in levels], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def test_frechet_diagonal_closed_form():
    levels_a = [[0.0, 1.0, 3.0], [-2.0, 2.0], [5.0, 5.5, 6.0, 9.0]]
    levels_b = [[1.0, 4.0], [0.0, 1.0, 2.0], [7.0, 8.0]]
    a, b = full_grid(levels_a), full_grid(levels_b)
    expected = 0.0
    for j in range(3):
        mu_a, s_a = naive_std([float(v) for v in a[:, j]])
        mu_b, s_b = naive_std([float(v) for v in b[:, j]])
        expected += (mu_a - mu_b) ** 2 + (s_a - s_b) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_the_eigen_reference_on_correlated_features(seed):
    rng = np.random.default_rng(seed)
    mix_a, mix_b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    a = rng.normal(size=(40, 5)) @ mix_a + 1.0
    b = rng.normal(size=(30, 5)) @ mix_b
    expected = eigen_frechet(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(3).normal(size=(50, 8))
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-8)  # a shift moves only the means


def test_frechet_with_fewer_embeddings_than_dimensions_stays_finite():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(4, 10)), rng.normal(size=(6, 10)) + 0.5
    value = frechet_distance(a, b)
    assert math.isfinite(value)
    assert value == pytest.approx(eigen_frechet(a, b), rel=1e-5)


def test_frechet_retries_with_eps_when_the_root_is_not_finite(monkeypatch):
    calls = []
    real_sqrtm = measures.sqrtm

    def flaky_sqrtm(matrix):
        calls.append(matrix.copy())
        return np.full_like(matrix, np.inf) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(measures, "sqrtm", flaky_sqrtm)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    value = frechet_distance(a, b, eps=1e-3)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    offset = 1e-3 * np.eye(3)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (cov_a + offset) @ (cov_b + offset), rtol=1e-12)
    assert math.isfinite(value)
    assert value == pytest.approx(eigen_frechet(a, b, root_eps=1e-3), rel=1e-10)
    assert value != pytest.approx(eigen_frechet(a, b), rel=1e-3)  # the offset did reach the root


def test_frechet_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="sizes differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(np.zeros(5), np.zeros(5))


# ----------------------------------------------------------------------------------------------- codebook_usage


def naive_usage(indices, k):
    counts = [0] * k
    for v in np.asarray(indices).ravel().tolist():
        counts[v] += 1
    total = sum(counts)
    entropy = 0.0
    for c in counts:
        if c:
            entropy -= (c / total) * math.log(c / total)
    used = sum(1 for c in counts if c)
    return math.exp(entropy), used, k - used, counts


def test_codebook_usage_matches_the_loop_reference():
    rng = np.random.default_rng(6)
    indices = rng.choice(12, size=(3, 7, 5), p=np.r_[np.full(6, 0.12), np.full(3, 0.09), np.zeros(3)] / 0.99)
    out = codebook_usage(indices, 16)
    perplexity, used, dead, counts = naive_usage(indices, 16)
    assert out.perplexity == pytest.approx(perplexity, rel=1e-12)
    assert (out.used, out.dead) == (used, dead)
    assert out.counts.tolist() == counts
    assert 1 < out.perplexity < used  # non-uniform use of `used` codes


def test_codebook_usage_hand_cases():
    uniform = codebook_usage(np.tile(np.arange(8), 5), 8)
    assert uniform.perplexity == pytest.approx(8.0, rel=1e-12)
    assert (uniform.used, uniform.dead) == (8, 0)
    one = codebook_usage(np.full((4, 4), 3), 8)
    assert one.perplexity == pytest.approx(1.0)
    assert (one.used, one.dead) == (1, 7)
    assert one.counts.tolist() == [0, 0, 0, 16, 0, 0, 0, 0]
    two = codebook_usage(np.array([0, 5, 5, 0]), 8)  # half and half: perplexity 2
    assert two.perplexity == pytest.approx(2.0, rel=1e-12)
    empty = codebook_usage(np.zeros(0, dtype=np.int64), 4)
    assert math.isnan(empty.perplexity) and (empty.used, empty.dead) == (0, 4)


def test_codebook_usage_rejects_bad_indices():
    with pytest.raises(ValueError, match="index 8"):
        codebook_usage(np.array([0, 8]), 8)
    with pytest.raises(ValueError, match="index -1"):
        codebook_usage(np.array([-1, 2]), 8)
    with pytest.raises(TypeError):
        codebook_usage(np.array([0.0, 1.0]), 8)
