"""The per-step product kernels against an exact product, on every shape their tiling splits."""

import numpy as np
import pytest

from charrnn.kernels.cpu import FEW_ROWS, ONE_ROW_MAX_BYTES, _matmul, matmul_few_rows, matmul_nt


# M and N cover whole 6 x 4 tiles, every count of leftover rows (0 to 5) and leftover columns
# (and none but leftovers); K covers a single term and lengths that are not a multiple of a SIMD
# vector.
@pytest.mark.parametrize("M", [1, 3, 4, 6, 11, 50])
@pytest.mark.parametrize("N", [1, 4, 7, 12])
@pytest.mark.parametrize("K", [1, 17, 64])
def test_matches_the_exact_product(M, N, K):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    A = rng.standard_normal((M, K))
    Bt = rng.standard_normal((N, K))
    exact = np.einsum("ik,jk->ij", A.astype(np.longdouble), Bt.astype(np.longdouble))
    for dtype, tol in [(np.float64, 1e-13), (np.float32, 1e-5)]:
        C = np.full((M, N), np.nan, dtype)  # every entry must be written
        matmul_nt(A.astype(dtype), Bt.astype(dtype), C)
        scale = np.abs(A) @ np.abs(Bt).T  # the error bound of a sum grows with sum |a b|
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


# the sampler's kernel: every row count it is used for, N whole and partial SIMD vectors, K with
# and without a remainder after its groups of four rows of W
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


# the sampler's product: its own kernel up to FEW_ROWS rows, BLAS above, and BLAS for one row
# against a W over ONE_ROW_MAX_BYTES; every route gives the product
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
