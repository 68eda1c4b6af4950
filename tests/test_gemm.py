"""The per-step product kernels against an exact product, on every shape their tiling splits."""

import numpy as np
import pytest

from charrnn.kernels.cpu import (FEW_ROWS, ONE_ROW_MAX_BYTES, _exp_shifted, _matmul,
                                 matmul_few_rows, matmul_nt, matmul_pairs)


# M and N cover whole 6 x 4 tiles, every count of leftover rows (0 to 5) and leftover columns
# (and none but leftovers); K covers a single term and lengths that are not a multiple of a SIMD
# vector.
@pytest.mark.parametrize("M", [1, 3, 4, 6, 11, 50])
@pytest.mark.parametrize("N", [1, 4, 7, 12])
@pytest.mark.parametrize("K", [1, 17, 64])
def test_matches_the_exact_product(M, N, K):
    assert_nt_product_is_exact(matmul_nt, M, N, K, seed=M * 1000 + N * 10 + K)


def assert_nt_product_is_exact(kernel, M, N, K, seed):
    """kernel(A, Bt, C) writes A @ Bt.T into C, within float64's and float32's error bounds of
    an extended-precision product."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K))
    Bt = rng.standard_normal((N, K))
    exact = np.einsum("ik,jk->ij", A.astype(np.longdouble), Bt.astype(np.longdouble))
    scale = np.abs(A) @ np.abs(Bt).T  # the error bound of a sum grows with sum |a b|
    for dtype, tol in [(np.float64, 1e-13), (np.float32, 1e-5)]:
        C = np.full((M, N), np.nan, dtype)  # every entry must be written, none accumulated
        kernel(A.astype(dtype), Bt.astype(dtype), C)
        np.testing.assert_array_less(np.abs(C - exact.astype(np.float64)), tol * scale + 1e-300,
                                     err_msg=f"{dtype.__name__} M={M} N={N} K={K}")


def test_nan_and_inf_propagate():
    A = np.ones((9, 40), np.float32)
    Bt = np.ones((6, 40), np.float32)
    A[2, 3] = np.nan
    A[5, 7] = np.inf
    C = np.zeros((9, 6), np.float32)
    matmul_nt(A, Bt, C)
    assert np.isnan(C[2]).all()
    assert np.isposinf(C[5]).all()
    assert (np.delete(C, [2, 5], axis=0) == 40).all()


# one row's kernel (and the classic GRU's and Jordan's up to FEW_ROWS rows): every row count, N
# whole and partial SIMD vectors, K with and without a remainder after its groups of four rows
# of W
@pytest.mark.parametrize("M", list(range(1, FEW_ROWS + 1)))
@pytest.mark.parametrize("N", [1, 7, 65, 384])
@pytest.mark.parametrize("K", [1, 2, 3, 4, 6, 17, 128])
def test_few_rows_matches_the_exact_product(M, N, K):
    rng = np.random.default_rng(M * 100000 + N * 100 + K)
    A = rng.standard_normal((M, K))
    W = rng.standard_normal((K, N))
    exact = A.astype(np.longdouble) @ W.astype(np.longdouble)
    scale = np.abs(A) @ np.abs(W)
    for dtype, tol in [(np.float64, 1e-13), (np.float32, 1e-5)]:
        C = np.full((M, N), np.nan, dtype)  # every entry must be written, none accumulated
        matmul_few_rows(A.astype(dtype), W.astype(dtype), C)
        np.testing.assert_array_less(np.abs(C - exact.astype(np.float64)), tol * scale + 1e-300,
                                     err_msg=f"{dtype.__name__} M={M} N={N} K={K}")


def test_few_rows_propagates_nan_and_inf():
    A = np.ones((3, 10), np.float32)
    W = np.ones((10, 5), np.float32)
    A[0, 9] = np.nan  # in the remainder after the groups of four
    A[2, 1] = np.inf
    C = np.zeros((3, 5), np.float32)
    matmul_few_rows(A, W, C)
    assert np.isnan(C[0]).all() and np.isposinf(C[2]).all() and (C[1] == 10).all()


def test_few_rows_refuses_mismatched_shapes():
    A, W = np.ones((2, 5), np.float32), np.ones((5, 3), np.float32)
    for bad_w, bad_c in [(np.ones((4, 3), np.float32), np.zeros((2, 3), np.float32)),
                         (W, np.zeros((3, 3), np.float32)), (W, np.zeros((2, 4), np.float32))]:
        with pytest.raises(ValueError, match="shapes"):
            matmul_few_rows(A, bad_w, bad_c)


# _matmul: its own kernel up to FEW_ROWS rows, BLAS above, and BLAS for one row against a W over
# ONE_ROW_MAX_BYTES; every route gives the product
@pytest.mark.parametrize("M", list(range(1, FEW_ROWS + 2)))
@pytest.mark.parametrize("large", [False, True], ids=["small-W", "W-over-the-limit"])
def test_sampler_product_on_every_route(M, large):
    K = 300
    N = ONE_ROW_MAX_BYTES // (4 * K) + 7 if large else 20
    rng = np.random.default_rng(M)
    A = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((K, N)).astype(np.float32)
    assert (W.nbytes > ONE_ROW_MAX_BYTES) == large
    C = np.full((M, N), np.nan, np.float32)
    _matmul(A, W, C)
    exact = A.astype(np.float64) @ W.astype(np.float64)
    scale = np.abs(A).astype(np.float64) @ np.abs(W).astype(np.float64)
    np.testing.assert_array_less(np.abs(C - exact), 1e-5 * scale)


# the sampler's batch product: M covers pairs of rows and an odd last row, N whole 8-column tiles,
# leftover columns and only leftovers, K a single term and lengths off a SIMD vector
@pytest.mark.parametrize("M", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("N", [1, 7, 8, 13, 65])
@pytest.mark.parametrize("K", [1, 17, 130])
def test_pairs_match_the_exact_product(M, N, K):
    assert_nt_product_is_exact(matmul_pairs, M, N, K, seed=M * 10000 + N * 100 + K)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rows_product_is_the_same_bits_in_any_batch(dtype):
    """What lets a batch split across threads without changing a stream's text: a row's
    result does not depend on how many rows there are or where the row sits."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((9, 203)).astype(dtype)
    Bt = rng.standard_normal((37, 203)).astype(dtype)
    whole = np.empty((9, 37), dtype)
    matmul_pairs(A, Bt, whole)
    for rows in ([4], [0, 1], [3, 8, 5], [8, 7, 6, 5, 4, 3, 2, 1, 0]):
        part = np.empty((len(rows), 37), dtype)
        matmul_pairs(np.ascontiguousarray(A[rows]), Bt, part)
        np.testing.assert_array_equal(part, whole[rows], err_msg=f"rows {rows}")


def test_pairs_propagate_nan_and_inf_and_refuse_mismatched_shapes():
    A = np.ones((5, 40), np.float32)
    Bt = np.ones((11, 40), np.float32)
    A[1, 3] = np.nan
    A[4, 39] = np.inf  # the odd last row, in the last element
    C = np.zeros((5, 11), np.float32)
    matmul_pairs(A, Bt, C)
    assert np.isnan(C[1]).all() and np.isposinf(C[4]).all()
    assert (C[[0, 2, 3]] == 40).all()
    for bad_bt, bad_c in [(np.ones((11, 39), np.float32), C), (Bt, np.zeros((4, 11), np.float32)),
                          (Bt, np.zeros((5, 10), np.float32))]:
        with pytest.raises(ValueError, match="shapes"):
            matmul_pairs(A, bad_bt, bad_c)


def test_the_draws_exp_is_within_an_ulp_of_libms():
    """exp((l - m) / t) over the whole range a draw meets, down to where it floors."""
    rng = np.random.default_rng(2)
    logits = np.concatenate([-rng.random(20000) * 720, -rng.random(2000) * 1e-3,
                             [0.0, -1e-300, -0.5 * np.log(2), -708.0, -709.0, -1e6]])
    probs, powers = np.empty_like(logits), np.empty(logits.size, np.int64)
    for temperature in (1.0, 0.37, 2.5):
        total = _exp_shifted(logits, 0.0, temperature, probs, powers)
        x = logits / temperature
        exact = np.where(x < -708.0, 0.0, np.exp(x))  # (0 below the floor, as for -inf)
        np.testing.assert_allclose(probs, exact, rtol=2.3e-16, atol=0)
        assert total == pytest.approx(exact.sum(), rel=1e-14)
    float32_logits = rng.standard_normal(4000).astype(np.float32) * 6
    m = float32_logits.max()
    _exp_shifted(float32_logits, m, 0.8, probs[:4000], powers[:4000])
    # the argument is formed as the draw forms it: a float32 difference, then a float64 division
    exact = np.exp((float32_logits - m).astype(np.float64) / 0.8)
    np.testing.assert_allclose(probs[:4000], exact, rtol=2.3e-16, atol=0)
