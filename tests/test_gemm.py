"""The product kernels against an exact product, on every shape their tiling splits."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from charrnn.kernels.cpu import (FEW_ROWS, K_BLOCK, ONE_ROW_MAX_BYTES, PACK_MIN_PANELS,
                                 PANEL_ALIGN, PANEL_BYTES, ROWS_BLOCK_BYTES, TILE_ROWS,
                                 VECTOR_BITS, _exp_shifted, _loop_features, _matmul, _pack_tiles,
                                 _rows_times_panels, _sum, copies_rows, matmul_few_rows,
                                 matmul_packed, new_panels, pack_panels, packed,
                                 rows_copy_size, tile_gemm)

NR32 = PANEL_BYTES // 4  # a panel's columns in float32 (32 with AVX-512, 16 with AVX2)


# The register tile's product (training's per-step products and the sampler's batch product).
# M covers one tile, every height the balanced tiling makes (up to three tiles, so heights
# TILE_ROWS - 1 and TILE_ROWS side by side) and a tall batch; N whole panels, a part panel, only
# a part panel, in both float types' panel widths, too few panels to copy A's rows and enough,
# and for one row groups of whole panels (ROW_TILE_PANELS at a time) with and without panels
# left over; K a single term and lengths off a vector.
@pytest.mark.parametrize("M", sorted({1, 2, 3, TILE_ROWS - 1, TILE_ROWS, TILE_ROWS + 1,
                                      2 * TILE_ROWS + 1, 3 * TILE_ROWS - 1, 64}))
@pytest.mark.parametrize("N", [1, 7, NR32 // 2 + 3, NR32, 2 * NR32 + 5, 4 * NR32,
                               (PACK_MIN_PANELS + 1) * NR32 + 3])
@pytest.mark.parametrize("K", [1, 17, 130])
def test_the_register_tile_matches_the_exact_product(M, N, K):
    rng = np.random.default_rng(M * 100000 + N * 100 + K)
    A = rng.standard_normal((M, K))
    W = rng.standard_normal((K, N))
    exact = A.astype(np.longdouble) @ W.astype(np.longdouble)
    scale = np.abs(A) @ np.abs(W)  # the error bound of a sum grows with sum |a w|
    for dtype, tol in [(np.float64, 1e-13), (np.float32, 1e-5)]:
        C = np.full((M, N), np.nan, dtype)  # every entry must be written, none accumulated
        matmul_packed(A.astype(dtype), packed(W.astype(dtype)), C)
        np.testing.assert_array_less(np.abs(C - exact.astype(np.float64)), tol * scale + 1e-300,
                                     err_msg=f"{dtype.__name__} M={M} N={N} K={K}")


def test_the_register_tile_writes_only_its_columns_and_rows():
    """A part panel's columns past N and rows past M are left alone: C may be a view with
    neighbours (a row stride larger than its width)."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((5, 9)).astype(np.float32)
    W = rng.standard_normal((9, NR32 + 3)).astype(np.float32)
    big = np.full((7, NR32 + 10), -7.0, np.float32)
    C = big[1:6, 2:NR32 + 5]
    matmul_packed(A, packed(W), C)
    np.testing.assert_allclose(C, A.astype(np.float64) @ W, rtol=1e-5, atol=1e-5)
    outside = np.ones(big.shape, bool)
    outside[1:6, 2:NR32 + 5] = False
    assert (big[outside] == -7.0).all()


def test_panels_hold_the_matrix_or_its_transpose_zero_padded():
    W = np.arange(1.0, 3 * (NR32 + 2) + 1, dtype=np.float32).reshape(3, NR32 + 2)
    P = packed(W)
    assert P.shape == (2, 3, NR32) and P.ctypes.data % PANEL_ALIGN == 0
    np.testing.assert_array_equal(P[0], W[:, :NR32])
    np.testing.assert_array_equal(P[1, :, :2], W[:, NR32:])
    assert (P[1, :, 2:] == 0).all()
    PT = packed(W.T)  # (NR32 + 2, 3): one panel
    np.testing.assert_array_equal(PT[0, :, :3], W.T)
    assert PT.shape == (1, NR32 + 2, NR32) and (PT[0, :, 3:] == 0).all()
    with pytest.raises(ValueError, match="shapes"):
        pack_panels(W, new_panels(3, NR32 + 2 + NR32, W))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("panels", [6, PACK_MIN_PANELS + 2], ids=["rows-in-place", "rows-packed"])
def test_a_rows_product_is_the_same_bits_in_any_batch(dtype, panels):
    """What lets a batch split across threads without changing a stream's text: a row's
    result does not depend on how many rows there are or where the row sits (in which tile,
    of which height), with A's rows read in place or copied."""
    rng = np.random.default_rng(1)
    M = 2 * TILE_ROWS + 3
    A = rng.standard_normal((M, 203)).astype(dtype)
    NR = PANEL_BYTES // np.dtype(dtype).itemsize
    N = (panels - 1) * NR + 7  # one row takes its whole panels four at a time
    P = packed(rng.standard_normal((203, N)).astype(dtype))
    whole = np.empty((M, N), dtype)
    matmul_packed(A, P, whole)
    for rows in ([4], [0, 1], [3, 8, 5], list(range(M - 1, -1, -1)), list(range(TILE_ROWS + 1))):
        part = np.empty((len(rows), N), dtype)
        matmul_packed(np.ascontiguousarray(A[rows]), P, part)
        np.testing.assert_array_equal(part, whole[rows], err_msg=f"rows {rows}")


def _lanes(dtype):
    return VECTOR_BITS // 8 // np.dtype(dtype).itemsize


# The copy of A's rows that the tiles read: every height the balanced tiling makes (one row, a
# whole tile, two tiles, 25 rows as a training shard's 12 + 13), K either side of whole vectors
# (the rows are turned a vector at a time, the rest element by element), and A as the rows of
# a matrix, a transpose (the weight gradients' x.T) and a view whose rows are not contiguous.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", sorted({1, 5, TILE_ROWS, TILE_ROWS + 1, 25, 3 * TILE_ROWS + 2}))
@pytest.mark.parametrize("K_vectors, K_extra", [(0, 3), (1, -1), (1, 0), (1, 1), (3, 5)])
@pytest.mark.parametrize("layout", ["rows", "transpose", "every-other-column"])
def test_rows_are_copied_tile_by_tile_k_major(dtype, M, K_vectors, K_extra, layout):
    K = K_vectors * _lanes(dtype) + K_extra
    rng = np.random.default_rng(M * 1000 + K)
    values = rng.permutation(M * K * 2).astype(dtype)  # all different: a misplaced one shows
    A = {"rows": values[:M * K].reshape(M, K),
         "transpose": values[:M * K].reshape(K, M).T,
         "every-other-column": values.reshape(M, 2 * K)[:, ::2]}[layout]
    out = np.full(rows_copy_size(M, K, A), np.nan, dtype)
    _pack_tiles(A, out)
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    i = 0
    for t in range(tiles):
        rows = (M - i) // (tiles - t)
        block = out[i * K:(i + rows) * K].reshape(K, rows)
        np.testing.assert_array_equal(block, A[i:i + rows].T, err_msg=f"tile {t}")
        i += rows
    assert i == M


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K, N", [(2, 5, 3), (TILE_ROWS + 3, 130, 2 * NR32 + 5),
                                     (3 * TILE_ROWS - 1, 64, (PACK_MIN_PANELS + 1) * NR32 + 3)])
def test_rows_copied_or_read_in_place_give_the_same_bits(dtype, M, K, N):
    """matmul_packed's two ways with several rows make the same multiply-adds: which one
    copies_rows picks changes the speed, never a bit."""
    rng = np.random.default_rng(M * K + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    P = packed(rng.standard_normal((K, N)).astype(dtype))
    copied, in_place = np.empty((M, N), dtype), np.empty((M, N), dtype)
    _rows_times_panels(A, P, copied, True)
    _rows_times_panels(A, P, in_place, False)
    np.testing.assert_array_equal(copied, in_place)
    assert copies_rows(PACK_MIN_PANELS) and not copies_rows(PACK_MIN_PANELS - 1)


# Rows copied into a buffer larger than any the C allocator keeps for reuse (glibc hands
# anything above 32 MB back to the system when it is freed), so a read of it after it was
# freed faults rather than passing on stale data. In its own process: a fault must fail this
# test, not end the run.
MANY_ROWS = textwrap.dedent("""
    import numpy as np
    from charrnn.kernels.cpu import PACK_MIN_PANELS, PANEL_BYTES, matmul_packed, packed
    rng = np.random.default_rng(5)
    M, K, N = 8200, 1024, PACK_MIN_PANELS * PANEL_BYTES // 4
    A = rng.standard_normal((M, K)).astype(np.float32)  # its copy: 33.6 MB
    W = rng.standard_normal((K, N)).astype(np.float32)
    C = np.full((M, N), np.nan, np.float32)
    matmul_packed(A, packed(W), C)
    exact = A.astype(np.float64) @ W
    print(float(np.max(np.abs(C - exact) / (np.abs(A) @ np.abs(W)))))
""")


def test_many_rows_are_multiplied_from_a_copy_that_lives_through_the_product():
    done = subprocess.run([sys.executable, "-c", MANY_ROWS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert float(done.stdout) < 1e-5


def test_the_register_tile_propagates_nan_and_inf_and_refuses_mismatched_shapes():
    A = np.ones((TILE_ROWS + 2, 40), np.float32)
    A[1, 3] = np.nan
    A[-1, 39] = np.inf  # the last row, in the last element
    P = packed(np.ones((40, 11), np.float32))
    C = np.zeros((TILE_ROWS + 2, 11), np.float32)
    matmul_packed(A, P, C)
    assert np.isnan(C[1]).all() and np.isposinf(C[-1]).all()
    assert (np.delete(C, [1, TILE_ROWS + 1], axis=0) == 40).all()
    for bad_p, bad_c in [(packed(np.ones((39, 11), np.float32)), C),
                         (P, np.zeros((4, 11), np.float32)),
                         (P, np.zeros((TILE_ROWS + 2, 11 + NR32), np.float32)),
                         (packed(np.ones((40, 11))), C)]:  # float64 panels: twice as narrow
        with pytest.raises(ValueError, match="do not match"):
            matmul_packed(A, bad_p, bad_c)


def test_the_register_tile_over_nothing_writes_zeros_and_refuses_panels_out_of_order():
    C = np.full((3, 5), np.nan, np.float32)
    matmul_packed(np.ones((3, 0), np.float32), packed(np.ones((0, 5), np.float32)), C)
    assert (C == 0).all()
    P = packed(np.ones((4, 2 * NR32 + 1), np.float32))
    C = np.zeros((2, 2 * NR32 + 1), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        matmul_packed(np.ones((2, 4), np.float32), P[::-1], C)  # panels read by address


def test_loops_are_compiled_as_wide_as_the_registers_where_llvm_would_halve_them():
    """With AVX-512, LLVM's tuning for most Intel cores vectorises loops 256 bits wide; the
    kernels turn that off (prefer-256-bit), and only there."""
    assert _loop_features("+avx2,+avx512f,+fma") == "+avx2,+avx512f,+fma,-prefer-256-bit"
    assert _loop_features("+avx2,+fma,-avx512f") is None
    assert _loop_features("+avx512fp16,-avx512f,+sse2") is None  # (a name, not a prefix)


WIDE_LOOPS = textwrap.dedent("""
    import sys
    from charrnn.kernels import cpu
    from numba import njit
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features
    import numpy as np

    @njit(fastmath=True)  # a loop LLVM vectorises, compiled after the kernels' module set it up
    def total(a):
        t = 0.0
        for x in a:
            t += x
        return t

    total(np.ones(64, np.float32))
    asm = "".join(total.inspect_asm().values())
    print(config.CPU_FEATURES, "+avx512f" in get_host_cpu_features().split(","), "zmm" in asm)
""")


def test_a_loop_compiled_in_the_kernels_process_uses_the_whole_registers(tmp_path):
    """In a process that imported the kernels, a loop gets 512-bit vectors exactly where the
    host has AVX-512; features the user set are left as they are."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_CPU_NAME", None)
    done = subprocess.run([sys.executable, "-c", WIDE_LOOPS], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    features, avx512, zmm = done.stdout.split()
    assert zmm == avx512
    assert features.endswith(",-prefer-256-bit") if avx512 == "True" else features == "None"
    host = subprocess.run([sys.executable, "-c", "from numba.core.codegen import "
                           "get_host_cpu_features as f; print(f())"], capture_output=True,
                          text=True, env=env, timeout=600).stdout.strip()
    done = subprocess.run([sys.executable, "-c", WIDE_LOOPS], capture_output=True, text=True,
                          env={**env, "NUMBA_CPU_FEATURES": host}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == host


SEPARATE_BUILD = textwrap.dedent("""
    import numpy as np
    from charrnn.kernels import cpu
    assert (cpu.VECTOR_BITS, cpu.TILE_ROWS, cpu._FMA) == (128, 6, "llvm.fmuladd"), \\
        (cpu.VECTOR_BITS, cpu.TILE_ROWS, cpu._FMA)
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        A = rng.standard_normal((15, 37)).astype(dtype)
        for N in (29, 75):  # too few panels to copy A's rows, and enough (its rows turned in
            W = rng.standard_normal((37, N)).astype(dtype)  # registers, 2 or 3 groups a tile)
            whole = np.empty((15, N), dtype)
            cpu.matmul_packed(A, cpu.packed(W), whole)
            exact = A.astype(np.longdouble) @ W.astype(np.longdouble)
            assert (np.abs(whole - exact) <= 1e-5 * (np.abs(A) @ np.abs(W))).all()
            for rows in ([3], [14, 0, 7], list(range(7))):
                part = np.empty((len(rows), N), dtype)
                cpu.matmul_packed(np.ascontiguousarray(A[rows]), cpu.packed(W), part)
                assert np.array_equal(part, whole[rows]), rows
    print("ok")
""")


def test_a_build_for_any_x86_64_has_its_own_tile_and_the_same_guarantees(tmp_path):
    """NUMBA_CPU_NAME=generic (a portable build: SSE2 only) gives 128-bit vectors, 16
    registers and a multiply-add LLVM may not fuse; the product is still exact to rounding and
    a row's bits still independent of the batch, A's rows copied or read in place."""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_CPU_FEATURES", None)
    done = subprocess.run([sys.executable, "-c", SEPARATE_BUILD], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# The training's large products (tile_gemm): every combination of transposes and beta, float32
# and float64, against an extended-precision product. K crosses two K_BLOCK boundaries (the sums
# are split there) and ends off a vector; M and N leave rows and columns over past the tiles and
# panels, and one M crosses a rows block; C is a view whose neighbours must stay as they were.
def _rows_block(dtype, K):
    return max(TILE_ROWS, ROWS_BLOCK_BYTES // (min(K, K_BLOCK) * np.dtype(dtype).itemsize)
               // TILE_ROWS * TILE_ROWS)


@pytest.mark.parametrize("a_t", [False, True])
@pytest.mark.parametrize("b_t", [False, True])
@pytest.mark.parametrize("beta", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, N, K", [(7, 13, 29), (2 * TILE_ROWS + 3, 2 * NR32 + 5,
                                                   2 * K_BLOCK + 5), (1, 1, 1),
                                     (2 * TILE_ROWS + 3, PACK_MIN_PANELS * NR32 + 5, K_BLOCK + 5)])
def test_tile_gemm_matches_the_exact_product(a_t, b_t, beta, dtype, M, N, K):
    rng = np.random.default_rng(int(a_t) + 2 * int(b_t) + 4 * beta + M)
    A = rng.standard_normal((K, M) if a_t else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if b_t else (K, N)).astype(dtype)
    big = rng.standard_normal((M + 2, N + 5)).astype(dtype)
    C = big[1:M + 1, 2:N + 2]  # a view: row stride N + 5
    before = big.copy()
    opA = (A.T if a_t else A).astype(np.longdouble)
    opB = (B.T if b_t else B).astype(np.longdouble)
    exact = (opA @ opB + beta * C.astype(np.longdouble)).astype(np.float64)
    scale = np.abs(opA) @ np.abs(opB) + np.abs(C)  # the error bound of a sum grows with sum |a b|
    tile_gemm(A, B, C, a_t, b_t, beta)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_array_less(np.abs(C - exact), tol * scale.astype(np.float64) + 1e-300)
    outside = np.ones(big.shape, bool)
    outside[1:M + 1, 2:N + 2] = False
    np.testing.assert_array_equal(big[outside], before[outside])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [NR32 + 3, PACK_MIN_PANELS * NR32 + 3])  # A's rows copied or not
@pytest.mark.parametrize("a_t", [False, True])
def test_tile_gemm_over_more_than_one_rows_block(dtype, N, a_t):
    K = 40
    M = _rows_block(dtype, K) + 3
    rng = np.random.default_rng(5)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    C = np.full((M, N), np.nan, dtype)  # every entry written, none accumulated
    tile_gemm(np.ascontiguousarray(A.T) if a_t else A, B, C, a_t, False, 0)
    exact = A.astype(np.longdouble) @ B.astype(np.longdouble)
    scale = np.abs(A) @ np.abs(B)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_array_less(np.abs(C - exact.astype(np.float64)), tol * scale + 1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_t", [False, True])
def test_tile_gemm_copies_a_rows_to_the_same_bits(dtype, a_t):
    """Against PACK_MIN_PANELS panels A's rows are copied tile by tile, against fewer read
    where they lie: the same multiply-adds, so the first panel's columns have the same bits
    either way (over two K blocks, the second accumulating)."""
    NR = PANEL_BYTES // np.dtype(dtype).itemsize
    M, K = 3 * TILE_ROWS - 1, 2 * K_BLOCK + 7
    rng = np.random.default_rng(6)
    A = rng.standard_normal((K, M) if a_t else (M, K)).astype(dtype)
    B = rng.standard_normal((K, PACK_MIN_PANELS * NR)).astype(dtype)
    assert copies_rows(PACK_MIN_PANELS) and not copies_rows(1)
    wide, narrow = np.empty((M, B.shape[1]), dtype), np.empty((M, NR), dtype)
    tile_gemm(A, B, wide, a_t, False, 0)
    tile_gemm(A, np.ascontiguousarray(B[:, :NR]), narrow, a_t, False, 0)
    np.testing.assert_array_equal(wide[:, :NR], narrow)


def test_tile_gemm_reads_views_with_any_strides():
    rng = np.random.default_rng(9)
    A = rng.standard_normal((6, 11))[1:5, 2:9]  # (4, 7), row stride 11
    B = rng.standard_normal((9, 8))[:7, :5]  # (7, 5), row stride 8
    C = np.empty((4, 5))
    tile_gemm(A, B, C, False, False, 0)
    np.testing.assert_allclose(C, A @ B, rtol=1e-12)
    tile_gemm(A[::-1, ::2], B[::2], C, False, False, 0)  # reversed rows, every other column
    np.testing.assert_allclose(C, A[::-1, ::2] @ B[::2], rtol=1e-12)
    row = rng.standard_normal(7)[None, :]  # one row
    one = np.empty((1, 5))
    tile_gemm(row, B, one, False, False, 0)
    np.testing.assert_allclose(one, row @ B, rtol=1e-12)


def test_tile_gemm_refuses_mismatches_and_beta_over_nothing():
    A, B = np.ones((4, 3)), np.ones((3, 5))
    for a, b, c in [(A, B, np.zeros((4, 6))), (A, np.ones((2, 5)), np.zeros((4, 5))),
                    (np.ones((3, 4)), B, np.zeros((4, 5)))]:
        with pytest.raises(ValueError, match="shapes do not match"):
            tile_gemm(a, b, c, False, False, 0)
    with pytest.raises(ValueError, match="strides do not match"):
        tile_gemm(A, B, np.zeros((4, 10))[:, ::2], False, False, 0)
    with pytest.raises(ValueError, match="types do not match"):
        tile_gemm(A.astype(np.float32), B, np.zeros((4, 5)), False, False, 0)
    with pytest.raises(ValueError, match="beta"):
        tile_gemm(A, B, np.zeros((4, 5)), False, False, 0.5)
    C = np.full((4, 5), 3.0)
    tile_gemm(np.ones((4, 0)), np.ones((0, 5)), C, False, False, 1)  # adds nothing
    assert (C == 3.0).all()
    C[0, 0] = np.nan
    tile_gemm(np.ones((4, 0)), np.ones((0, 5)), C, False, False, 0)  # beta 0 overwrites
    assert (C == 0).all()


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


def test_the_draws_exp_is_within_an_ulp_of_libms():
    """exp((l - m) / t) over the whole range a draw meets, down to where it floors."""
    rng = np.random.default_rng(2)
    logits = np.concatenate([-rng.random(20000) * 720, -rng.random(2000) * 1e-3,
                             [0.0, -1e-300, -0.5 * np.log(2), -708.0, -709.0, -1e6]])
    probs, powers = np.empty_like(logits), np.empty(logits.size, np.int64)
    for temperature in (1.0, 0.37, 2.5):
        _exp_shifted(logits, 0.0, temperature, probs, powers)
        total = _sum(probs)
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


def test_the_draws_exp_of_a_slice_gives_the_bits_of_the_whole_there():
    """One stream in halves exp's each half's columns on its own thread (generate_half): each
    element's bits may not depend on where its slice starts or ends (the vectorised loop's
    body against its scalar remainder)."""
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        logits = (rng.standard_normal(1001) * 8).astype(dtype)
        m = logits.max()
        whole = np.empty(logits.size)
        powers = np.empty(logits.size, np.int64)
        _exp_shifted(logits, m, 0.7, whole, powers)
        for lo, hi in [(0, 1), (1, 1001), (3, 517), (515, 1000), (7, 8), (64, 96)]:
            part = np.full(hi - lo, np.nan)
            _exp_shifted(logits[lo:hi], m, 0.7, part, powers[lo:hi])
            np.testing.assert_array_equal(part.view(np.int64), whole[lo:hi].view(np.int64))
