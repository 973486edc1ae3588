/* Matrix products of an ahead-of-time library: a group that is a plain product (loops::Contraction) runs
 * as a packed, register-tiled sgemm instead of its loops, as the JIT hands it to matrixmultiply
 * (backend/jit/gemm.rs, whose invariants hold here too).
 *
 * The output is cut into fixed blocks of rows (LOSSC_GEMM_ROWS, a symmetric product's
 * LOSSC_GEMM_SYMMETRIC_ROWS), one sgemm each, so which thread computes a block never changes its bits.
 * Each block packs the right operand in panels of LOSSC_GEMM_NR columns and its own rows in panels of
 * LOSSC_GEMM_MR, LOSSC_GEMM_KC terms of the sum at a time, and a micro-kernel keeps an MR x NR tile of
 * sums in vector registers (GCC's vector extensions: AVX2 with FMA where the library is built for a CPU
 * that has them, LOSSC_RT_AVX2, as the kernels are). A symmetric product (L = Rᵀ, `x·xᵀ`) computes each
 * block's columns from its first row on and mirrors them into the later rows. A right operand read
 * transposed is first copied in row order (rows padded by a cache line) when the product runs as several
 * blocks, since every block packs all of it. A masked product runs dense only when the operand its mask
 * does not test is all finite; otherwise the group's loops run. Pairwise squared distances (a Contraction
 * with `distance`) run through the same blocks and panels, each term a squared difference. */

#define LOSSC_GEMM_ROWS 128
#define LOSSC_GEMM_SYMMETRIC_ROWS 64
#define LOSSC_GEMM_MR 6
#define LOSSC_GEMM_NR 16
#define LOSSC_GEMM_KC 256
#define LOSSC_GEMM_NC 1024

#if LOSSC_RT_AVX2
#define LOSSC_GEMM_TARGET __attribute__((target("avx2,fma")))
#else
#define LOSSC_GEMM_TARGET
#endif

typedef float lossc_v8 __attribute__((vector_size(32)));

/* A buffer of floats kept by the thread (never shrunk), or NULL where it cannot be had. */
static float *lossc_gemm_buffer(float **kept, size_t *have, size_t floats) {
    if (*have < floats) {
        free(*kept);
        *kept = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        *have = *kept ? floats : 0;
    }
    return *kept;
}

/* The MR x NR tile of sums of `kc` terms: packed rows `a` (kc x MR), packed columns `b` (kc x NR); each
 * term a product, or a squared difference where `distance` (backend/jit/distance.rs, in the same order). */
LOSSC_GEMM_TARGET static void lossc_gemm_tile(int64_t kc, const float *restrict a, const float *restrict b,
                                              float tile[LOSSC_GEMM_MR][LOSSC_GEMM_NR], int distance) {
    lossc_v8 acc[LOSSC_GEMM_MR][2];
    for (int i = 0; i < LOSSC_GEMM_MR; i++) acc[i][0] = acc[i][1] = (lossc_v8){0};
    a = __builtin_assume_aligned(a, 32);
    b = __builtin_assume_aligned(b, 32);
    for (int64_t p = 0; p < kc; p++) {
        lossc_v8 b0 = *(const lossc_v8 *)(b + p * LOSSC_GEMM_NR);
        lossc_v8 b1 = *(const lossc_v8 *)(b + p * LOSSC_GEMM_NR + 8);
        if (distance) {
#pragma GCC unroll 6
            for (int i = 0; i < LOSSC_GEMM_MR; i++) {
                float x = a[p * LOSSC_GEMM_MR + i];
                lossc_v8 d0 = b0 - x, d1 = b1 - x;
                acc[i][0] += d0 * d0;
                acc[i][1] += d1 * d1;
            }
            continue;
        }
#pragma GCC unroll 6
        for (int i = 0; i < LOSSC_GEMM_MR; i++) {
            float x = a[p * LOSSC_GEMM_MR + i];
            acc[i][0] += x * b0;
            acc[i][1] += x * b1;
        }
    }
    for (int i = 0; i < LOSSC_GEMM_MR; i++) {
        memcpy(&tile[i][0], &acc[i][0], sizeof(lossc_v8));
        memcpy(&tile[i][8], &acc[i][1], sizeof(lossc_v8));
    }
}

/* A panel of `width` lanes (`used` of them read, the rest zeros) by `kc` terms: panel[p * width + l] =
 * src[l * lane + p * term], copied along whichever stride is 1. */
static void lossc_gemm_pack(float *restrict panel, int64_t width, int64_t used, int64_t kc, const float *src,
                            int64_t lane, int64_t term) {
    if (lane == 1 && used == width) {
        /* Whole runs, of a size the compiler knows (a vector move or two). */
        if (width == LOSSC_GEMM_NR)
            for (int64_t p = 0; p < kc; p++) memcpy(panel + p * width, src + p * term, LOSSC_GEMM_NR * sizeof(float));
        else
            for (int64_t p = 0; p < kc; p++) memcpy(panel + p * width, src + p * term, LOSSC_GEMM_MR * sizeof(float));
        return;
    }
    if (lane == 1) {
        for (int64_t p = 0; p < kc; p++) {
            memcpy(panel + p * width, src + p * term, (size_t)used * sizeof(float));
            for (int64_t l = used; l < width; l++) panel[p * width + l] = 0.0f;
        }
        return;
    }
    for (int64_t l = 0; l < used; l++) {
        const float *run = src + l * lane;
        for (int64_t p = 0; p < kc; p++) panel[p * width + l] = run[p * term];
    }
    for (int64_t l = used; l < width; l++)
        for (int64_t p = 0; p < kc; p++) panel[p * width + l] = 0.0f;
}

/* c[i, j] (row stride ldc) = Σ_p a[i, p] b[p, j] (where `distance`: Σ_p (a[i, p] - b[p, j])²) for i < m,
 * j < n, p < k (a, b by their strides). */
static int lossc_gemm(int64_t m, int64_t k, int64_t n, const float *a, int64_t rsa, int64_t csa, const float *b,
                      int64_t rsb, int64_t csb, float *c, int64_t ldc, int distance) {
    static _Thread_local float *packed_a, *packed_b;
    static _Thread_local size_t have_a, have_b;
    int64_t mp = (m + LOSSC_GEMM_MR - 1) / LOSSC_GEMM_MR * LOSSC_GEMM_MR;
    int64_t nc_most = n < LOSSC_GEMM_NC ? n : LOSSC_GEMM_NC;
    int64_t np = (nc_most + LOSSC_GEMM_NR - 1) / LOSSC_GEMM_NR * LOSSC_GEMM_NR;
    int64_t kc_most = k < LOSSC_GEMM_KC ? k : LOSSC_GEMM_KC;
    float *pa = lossc_gemm_buffer(&packed_a, &have_a, (size_t)(mp * kc_most));
    float *pb = lossc_gemm_buffer(&packed_b, &have_b, (size_t)(np * kc_most));
    if (!pa || !pb) return 0;
    float tile[LOSSC_GEMM_MR][LOSSC_GEMM_NR];
    for (int64_t jc = 0; jc < n; jc += LOSSC_GEMM_NC) {
        int64_t nc = n - jc < LOSSC_GEMM_NC ? n - jc : LOSSC_GEMM_NC;
        for (int64_t pc = 0; pc < k; pc += LOSSC_GEMM_KC) {
            int64_t kc = k - pc < LOSSC_GEMM_KC ? k - pc : LOSSC_GEMM_KC;
            /* The right operand's panels: NR columns each, kc rows of them, zeros past the last column;
             * the left operand's: MR rows each, zeros past the last row. Each is read along its unit
             * stride. */
            for (int64_t jr = 0; jr < nc; jr += LOSSC_GEMM_NR) {
                int64_t w = nc - jr < LOSSC_GEMM_NR ? nc - jr : LOSSC_GEMM_NR;
                lossc_gemm_pack(pb + jr * kc, LOSSC_GEMM_NR, w, kc, b + pc * rsb + (jc + jr) * csb, csb, rsb);
            }
            for (int64_t ir = 0; ir < m; ir += LOSSC_GEMM_MR) {
                int64_t h = m - ir < LOSSC_GEMM_MR ? m - ir : LOSSC_GEMM_MR;
                lossc_gemm_pack(pa + ir * kc, LOSSC_GEMM_MR, h, kc, a + ir * rsa + pc * csa, rsa, csa);
            }
            for (int64_t jr = 0; jr < nc; jr += LOSSC_GEMM_NR) {
                int64_t w = nc - jr < LOSSC_GEMM_NR ? nc - jr : LOSSC_GEMM_NR;
                for (int64_t ir = 0; ir < m; ir += LOSSC_GEMM_MR) {
                    int64_t h = m - ir < LOSSC_GEMM_MR ? m - ir : LOSSC_GEMM_MR;
                    lossc_gemm_tile(kc, pa + ir * kc, pb + jr * kc, tile, distance);
                    for (int64_t i = 0; i < h; i++) {
                        float *out = c + (ir + i) * ldc + jc + jr;
                        if (pc == 0) {
                            for (int64_t j = 0; j < w; j++) out[j] = tile[i][j];
                        } else {
                            for (int64_t j = 0; j < w; j++) out[j] += tile[i][j];
                        }
                    }
                }
            }
        }
    }
    return 1;
}

/* Destination rows per strip of lossc_gemm_transpose (backend/jit/gemm.rs: TRANSPOSE_STRIP). */
#define LOSSC_GEMM_STRIP 8

/* dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols, in strips of source columns. */
static void lossc_gemm_transpose(const float *src, int64_t src_stride, int64_t rows, int64_t cols, float *dst,
                                 int64_t dst_stride) {
    for (int64_t strip = 0; strip < cols; strip += LOSSC_GEMM_STRIP) {
        int64_t end = strip + LOSSC_GEMM_STRIP < cols ? strip + LOSSC_GEMM_STRIP : cols;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = strip; j < end; j++) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
}

/* Output rows per block of a product. */
static int64_t lossc_rt_matmul_block_rows(const struct lossc_rt_matmul *mm) {
    return mm->symmetric ? LOSSC_GEMM_SYMMETRIC_ROWS : LOSSC_GEMM_ROWS;
}

/* Computes output rows lo..hi; 0 where its packing buffers could not be had. */
static int lossc_rt_matmul_block(const struct lossc_rt_matmul *mm, int64_t lo, int64_t hi) {
    if (hi > mm->rows) hi = mm->rows;
    if (lo >= hi || mm->columns == 0) return 1;
    int64_t n = mm->columns;
    float *out = mm->c + lo * n;
    if (mm->depth == 0) {
        memset(out, 0, (size_t)((hi - lo) * n) * sizeof(float));
        return 1;
    }
    /* A symmetric product computes columns from `lo` on; the rest of these rows mirrors earlier blocks. */
    int64_t first = mm->symmetric ? lo : 0;
    if (!lossc_gemm(hi - lo, mm->depth, n - first, mm->a + lo * mm->rsa, mm->rsa, mm->csa, mm->b + first * mm->csb,
                    mm->rsb, mm->csb, out + first, n, mm->distance))
        return 0;
    if (mm->symmetric && hi < n) lossc_gemm_transpose(mm->c + lo * n + hi, n, hi - lo, n - hi, mm->c + hi * n + lo, n);
    return 1;
}

/* Whether every value is finite. */
static int lossc_gemm_all_finite(const float *x, int64_t n) {
    int finite = 1;
    for (int64_t i = 0; i < n; i++) finite &= isfinite(x[i]) != 0;
    return finite;
}

/* The product of group `g` at this call's buffers and extents, or 0 where its loops run (a masked product
 * whose other operand holds a non-finite value, distances to fewer columns than a tile's, or no memory for
 * the transposed copy). */
static int lossc_rt_matmul_of(const struct lossc_rt_product *p, void *const *ptrs, const int64_t *dims,
                              const struct lossc_rt_extents *ext, float *out, struct lossc_rt_matmul *mm) {
    static _Thread_local float *copy;
    static _Thread_local size_t have;
    int64_t rows = dims[0] > 0 ? dims[0] : 0, depth = dims[1] > 0 ? dims[1] : 0, columns = dims[2] > 0 ? dims[2] : 0;
    if (p->finite >= 0 && !lossc_gemm_all_finite(ptrs[p->finite], ext->buffer_elements[p->finite]))
        return 0;
    /* Distances to fewer columns than a tile's run as loops (backend/jit/distance.rs: NR). */
    if (p->distance && columns < LOSSC_GEMM_NR) return 0;
    /* (stride between rows, stride between columns) of an m x n matrix view, read transposed or not. */
    *mm = (struct lossc_rt_matmul){rows, depth, columns, ptrs[p->left], 0, 0, ptrs[p->right], 0, 0, out,
                                   p->symmetric && rows == columns, p->distance};
    if (p->left_transposed) mm->rsa = 1, mm->csa = rows;
    else mm->rsa = depth, mm->csa = 1;
    if (p->right_transposed) mm->rsb = 1, mm->csb = depth;
    else mm->rsb = columns, mm->csb = 1;
    if (mm->rsb == 1 && depth > 1 && rows > lossc_rt_matmul_block_rows(mm)) {
        /* A `columns x depth` buffer read as `depth x columns`: its transpose, in row order, rows padded by
         * a cache line. */
        int64_t stride = (columns + 15) / 16 * 16 + 16;
        float *t = lossc_gemm_buffer(&copy, &have, (size_t)(depth * stride));
        if (!t) return 0;
        lossc_gemm_transpose(mm->b, depth, columns, depth, t, stride);
        mm->b = t, mm->rsb = stride, mm->csb = 1;
        /* `x·xᵀ`: the copy is `x` in column order too. */
        if (mm->symmetric && mm->csa == 1) mm->a = t, mm->rsa = 1, mm->csa = stride;
    }
    return 1;
}
