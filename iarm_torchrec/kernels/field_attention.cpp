// IARM's multi-head field attention (paper Eq. 7-10) for CPU, vectorised across samples.
//
// CTR models attend over few fields (M ~ 10-100) with small heads (d' ~ 4-64). Per sample these
// matrices are far too small for a GEMM library, and a softmax over rows of M floats wastes vector
// lanes. Here each SIMD lane holds one sample: a block of LANES samples is transposed to lane-major
// vectors, goes through the plain per-sample algorithm with every float replaced by a LANES-wide
// vector (full-width FMAs, no shuffles, no horizontal reductions), and is transposed back.
//
// qkv is float32 or bf16 (bf16 autocast's projections). bf16 is widened to float32 while it is
// transposed in and the results are rounded back while they are transposed out, so no float32 copy
// of a bf16 qkv, output or gradient is made. Where the compiler targets AVX512-BF16 (the build adds
// -mavx512bf16 when the CPU has it), the bf16 path's six matrix products run in bf16 arithmetic
// (vdpbf16ps: two bf16 products per float32 lane, float32 sums) as ATen's bf16 attention does, the
// probabilities and their gradient rounded to bf16 first; the softmax and its gradient's row sums stay
// float32. Otherwise, and for float32 input always, the attention is float32 arithmetic.
//
// Registered as torch.ops.iarm.field_attention_forward / field_attention_backward; the autograd
// wiring and the build live in iarm_torchrec/kernels/field_attention.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int LANES = 16;
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

inline vf splat(float x) { return vf{} + x; }

// exp(x) for x <= 0 (softmax after subtracting the row max): x = n ln2 + r with |r| <= ln2 / 2,
// Cephes' expf polynomial for e^r, times 2^n; relative error ~1e-7. AVX-512 rounds and scales
// in one instruction each.
inline vf exp_nonpositive(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
#if defined(__AVX512F__)
  const vf nf = (vf)_mm512_roundscale_ps((__m512)(x * splat(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vf fx = x * splat(1.44269504088896341f) + splat(0.5f);
  const vi trunc = __builtin_convertvector(fx, vi);
  const vi n = trunc - (__builtin_convertvector(trunc, vf) > fx ? 1 : 0);  // floor(x / ln2 + 1/2)
  const vf nf = __builtin_convertvector(n, vf);
#endif
  vf r = x - nf * splat(0.693359375f);
  r = r - nf * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500E-4f);
  p = p * r + splat(1.3981999507E-3f);
  p = p * r + splat(8.3334519073E-3f);
  p = p * r + splat(4.1665795894E-2f);
  p = p * r + splat(1.6666665459E-1f);
  p = p * r + splat(5.0000001201E-1f);
  p = p * r * r + r + splat(1.0f);
#if defined(__AVX512F__)
  return (vf)_mm512_scalef_ps((__m512)p, (__m512)nf);
#else
  const vi bits = (__builtin_convertvector(nf, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

#if defined(__AVX512F__)
// In-register transpose of 16 rows of 16 floats. Not inlined: that is how GCC compiled it when
// gather and scatter read float32 only; inlined into the four gathers and scatters of float32 and
// bf16, it measured 0.98x the float32 forward and backward.
__attribute__((noinline)) void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}
#endif

#if defined(__AVX512F__)
// 16 consecutive elements as floats, and back. bf16 -> float32 is exact (a bf16 is the upper half
// of a float32's bits); float32 -> bf16 rounds to nearest even as c10::BFloat16 does (NaN to its
// 0x7FC0), so that a bf16 result is bit for bit the float32 result's `.to(torch.bfloat16)` (but
// for a NaN's bits: ATen's vectorised cast writes 0xFFFF).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
inline void store16(at::BFloat16* p, __m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
#endif

// Prefetch distance of gather and scatter in elements of T: 8 cache lines (see gather).
template <typename T>
constexpr int64_t AHEAD = 8 * 64 / sizeof(T);

// Lane-major copy of LANES samples' first n elements (samples `sample` elements apart), as floats:
// dst[e][l] = src[l * sample + e]; lanes past `valid` are 0. T is float or at::BFloat16: bf16 input
// is widened here, while it is gathered, so that no float32 copy of it is ever made. The 16 samples
// are 16 streams from memory (qkv is ~30 MB at B = 1024 in float32); prefetching each 8 lines ahead
// measured ~1.1x the forward and the backward (4 or 16 lines ahead: less), so the hardware
// prefetcher alone lags behind them.
template <typename T>
void gather(const T* src, int64_t sample, int64_t n, int valid, vf* dst) {
  int64_t e = 0;
#if defined(__AVX512F__)
  for (; e + LANES <= n; e += LANES) {
    __m512 r[16];
    for (int l = 0; l < valid; ++l) _mm_prefetch(reinterpret_cast<const char*>(src + l * sample + e + AHEAD<T>), _MM_HINT_T0);
    for (int l = 0; l < LANES; ++l) r[l] = l < valid ? load16(src + l * sample + e) : _mm512_setzero_ps();
    transpose16(r);
    for (int c = 0; c < LANES; ++c) std::memcpy(&dst[e + c], &r[c], sizeof(vf));
  }
#endif
  for (; e < n; ++e) {
    vf x = vf{};
    for (int l = 0; l < valid; ++l) x[l] = static_cast<float>(src[l * sample + e]);
    dst[e] = x;
  }
}

// The inverse of gather for the first `valid` lanes, rounding to T (nearest even for bf16),
// prefetching what it writes likewise (the backward's gain is mostly here: its ~30 MB of gradient
// is read for ownership before a write).
template <typename T>
void scatter(const vf* src, int64_t n, int valid, T* dst, int64_t sample) {
  int64_t e = 0;
#if defined(__AVX512F__)
  for (; e + LANES <= n; e += LANES) {
    __m512 r[16];
    for (int c = 0; c < LANES; ++c) std::memcpy(&r[c], &src[e + c], sizeof(vf));
    transpose16(r);
    for (int l = 0; l < valid; ++l) _mm_prefetch(reinterpret_cast<const char*>(dst + l * sample + e + AHEAD<T>), _MM_HINT_T0);
    for (int l = 0; l < valid; ++l) store16(dst + l * sample + e, r[l]);
  }
#endif
  for (; e < n; ++e) {
    const vf x = src[e];
    for (int l = 0; l < valid; ++l) dst[l * sample + e] = static_cast<T>(x[l]);
  }
}

// Register blocking. Per sample every step below is a product of two small matrices (M x d' or
// M x M), and one head's operands (~80 KB each at M = 39, d' = 32) sit in L2, not L1. A pass that
// keeps one row's outputs in registers loads one operand vector from L2 per FMA, which caps it at
// L2's rate (about half the FMA rate). Blocks of ROWS x COLS accumulators load ROWS + COLS vectors
// for ROWS * COLS FMAs. COLS also steps through d' (4 divides every supported d'); 5 x 4 (20
// accumulators + 5 + 1 operands of AVX-512's 32 registers) measured ~1.1x 4 x 4, as did 6 x 4, which
// pads M = 39 to 42 rows where 5 x 4 pads it to 40.
constexpr int ROWS = 5, COLS = 4;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Field counts padded for the blocks: `rows` for blocks of ROWS fields, `cols` of COLS, `all`
// the larger (the buffers' field count). What is computed for a padding field (a row i >= M or a
// column j >= M of a and ds, a row >= M of dq, dk, dv) never enters a sum over real fields: the
// softmax and every product over fields run to M, and the padding rows are never scattered.
struct Padding {
  int64_t rows, cols, all;
  explicit Padding(int64_t M) : rows(round_up(M, ROWS)), cols(round_up(M, COLS)), all(std::max(rows, cols)) {}
};

inline vf madd(vf acc, vf x, vf y) { return acc + x * y; }

#if defined(__AVX512BF16__)
// 16 lanes of bf16 pairs: lane l's 32 bits hold two consecutive terms of one sum for sample l (the
// lower index in the low half), which is how vdpbf16ps pairs its operands: acc_l += x_l,lo * y_l,lo
// + x_l,hi * y_l,hi. Each operand of a product is laid out paired along that product's sum (see
// pair_up), so one instruction does two of its steps. vdpbf16ps and the float32 -> bf16 conversion
// ignore MXCSR and take subnormal inputs as 0, which only drops terms below 2^-126.
typedef int16_t vb __attribute__((vector_size(2 * LANES * sizeof(int16_t))));

inline vf madd(vf acc, vb x, vb y) { return (vf)_mm512_dpbf16_ps((__m512)acc, (__m512bh)x, (__m512bh)y); }

// (lo, hi) rounded to bf16 (nearest even, as ATen rounds the bf16 attention's probabilities; exact
// for values that were bf16) and interleaved lane by lane. The conversion puts lo's 16 lanes in the
// low 16 halves and hi's above them, vpermw interleaves them.
inline vb pair(vf lo, vf hi) {
  alignas(64) static constexpr int16_t interleave[2 * LANES] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                                21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26,
                                                                11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh((__m512)hi, (__m512)lo);
  return (vb)_mm512_permutexvar_epi16(_mm512_load_si512(interleave), halves);
}

// dst[r * dr + p * dp] = pair(src[r * sr + 2p * sk], src[r * sr + (2p + 1) * sk]) for r < R and
// p < ceil(K / 2): R rows of K terms paired along the terms, an odd K's last pair with 0 (what a
// product of two paired operands adds for that half is then 0 whatever the other holds). For the
// probabilities and their gradient: O(M^2) a head against the products' O(M^2 d').
inline void pair_up(const vf* src, int64_t sr, int64_t sk, int64_t R, int64_t K, vb* dst, int64_t dr, int64_t dp) {
  for (int64_t p = 0; 2 * p < K; ++p) {
    const vf* lo = src + 2 * p * sk;
    if (2 * p + 1 < K)
      for (int64_t r = 0; r < R; ++r) dst[r * dr + p * dp] = pair(lo[r * sr], lo[r * sr + sk]);
    else
      for (int64_t r = 0; r < R; ++r) dst[r * dr + p * dp] = pair(lo[r * sr], vf{});
  }
}
#endif

// acc[r][c] = sum_{k < K} x[r * xr + k * xk] * y[c * yc + k * yk], summed in order of k. V is vf
// (float32 FMAs) or vb (bf16 pairs: then each k is two terms of the sum).
template <typename V>
inline void block_product(const V* x, int64_t xr, int64_t xk, const V* y, int64_t yc, int64_t yk, int64_t K,
                          vf (&acc)[ROWS][COLS]) {
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) acc[r][c] = vf{};
  for (int64_t k = 0; k < K; ++k) {
    V xs[ROWS];
    for (int r = 0; r < ROWS; ++r) xs[r] = x[r * xr + k * xk];
    for (int c = 0; c < COLS; ++c) {
      const V yc_k = y[c * yc + k * yk];
      for (int r = 0; r < ROWS; ++r) acc[r][c] = madd(acc[r][c], xs[r], yc_k);
    }
  }
}

inline void store(const vf (&acc)[ROWS][COLS], vf* dst, int64_t row_stride) {
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) dst[r * row_stride + c] = acc[r][c];
}

// One head on LANES samples: row m of q (and of k, v) is the K vectors at q + m * stride (K = d',
// or d' / 2 bf16 pairs), for m < P.all. Rows i..i+ROWS-1 of a (P.all apart, a points at row i):
// a_ij = softmax_j <q_i, k_j> for j < M (Eq. 7-8).
template <int K, typename V>
void probabilities(const V* q, const V* k, int64_t stride, int64_t M, const Padding& P, vf* a) {
  const int64_t Mp = P.all;
  for (int64_t j = 0; j < P.cols; j += COLS) {
    vf acc[ROWS][COLS];
    block_product(q, stride, 1, k + j * stride, stride, 1, K, acc);
    store(acc, a + j, Mp);
  }
  for (int r = 0; r < ROWS; ++r) {
    vf* ar = a + r * Mp;
    vf mx = splat(-3.0e38f);
    for (int64_t j = 0; j < M; ++j) mx = ar[j] > mx ? ar[j] : mx;
    vf sum = vf{};
    for (int64_t j = 0; j < M; ++j) {
      ar[j] = exp_nonpositive(ar[j] - mx);
      sum += ar[j];
    }
    const vf inv = splat(1.0f) / sum;
    for (int64_t j = 0; j < M; ++j) ar[j] *= inv;
  }
}

// out_i = sum_j a_ij v_j (Eq. 9), written at out + i * out_stride; a is ROWS x Mp scratch.
template <int D>
void forward_head(const vf* q, const vf* k, const vf* v, int64_t stride, int64_t M, vf* a, vf* out,
                  int64_t out_stride) {
  const Padding P(M);
  const int64_t Mp = P.all;
  for (int64_t i = 0; i < P.rows; i += ROWS) {
    probabilities<D>(q + i * stride, k, stride, M, P, a);
    for (int t = 0; t < D; t += COLS) {
      vf acc[ROWS][COLS];
      block_product(a, Mp, 1, v + t, 1, stride, M, acc);
      store(acc, out + i * out_stride + t, out_stride);
    }
  }
}

// The softmax's gradient on ROWS rows (Mp apart): ds_ij = a_ij (ds_ij - sum_k a_ik ds_ik) for j < M,
// ds holding dO_i . v_j on entry.
inline void softmax_backward(const vf* a, int64_t M, int64_t Mp, vf* ds) {
  for (int r = 0; r < ROWS; ++r) {
    const vf* ar = a + r * Mp;
    vf* dr = ds + r * Mp;
    vf dot = vf{};
    for (int64_t j = 0; j < M; ++j) dot += ar[j] * dr[j];
    for (int64_t j = 0; j < M; ++j) dr[j] = ar[j] * (dr[j] - dot);
  }
}

// The backward's column blocks: dV_j = sum_i a_ij dO_i and dK_j = sum_i dS_ij q_i for the first
// `rows` fields j (ROWS at a time), written `grad_stride` vectors apart. a and ds are indexed [i][j]
// (Mp apart), dO and q [i][t] (their own strides), each sum running over K entries i (V = vf) or K
// pairs of them (V = vb).
template <int D, typename V>
inline void column_blocks(const V* a, const V* ds, int64_t Mp, const V* dout, int64_t dout_stride, const V* q,
                          int64_t q_stride, int64_t K, int64_t rows, vf* dv, vf* dk, int64_t grad_stride) {
  for (int64_t j = 0; j < rows; j += ROWS) {
    for (int t = 0; t < D; t += COLS) {
      vf acc[ROWS][COLS];
      block_product(a + j, 1, Mp, dout + t, 1, dout_stride, K, acc);
      store(acc, dv + j * grad_stride + t, grad_stride);
      block_product(ds + j, 1, Mp, q + t, 1, q_stride, K, acc);
      store(acc, dk + j * grad_stride + t, grad_stride);
    }
  }
}

// Gradients of forward_head into dq, dk, dv (laid out as q, k, v). The probabilities are
// recomputed into `a` (cheaper than keeping B H M^2 floats between forward and backward);
// a and ds are Mp x Mp scratch.
template <int D>
void backward_head(const vf* q, const vf* k, const vf* v, int64_t stride, const vf* dout, int64_t out_stride,
                   int64_t M, vf* dq, vf* dk, vf* dv, vf* a, vf* ds) {
  const Padding P(M);
  const int64_t Mp = P.all;
  for (int64_t i = 0; i < P.rows; i += ROWS) {  // row blocks: dS_ij = a_ij (<dO_i, v_j> - sum_k a_ik <dO_i, v_k>), dQ_i
    vf* ai = a + i * Mp;
    vf* dsi = ds + i * Mp;
    probabilities<D>(q + i * stride, k, stride, M, P, ai);
    for (int64_t j = 0; j < P.cols; j += COLS) {
      vf acc[ROWS][COLS];
      block_product(dout + i * out_stride, out_stride, 1, v + j * stride, stride, 1, D, acc);
      store(acc, dsi + j, Mp);
    }
    softmax_backward(ai, M, Mp, dsi);
    for (int t = 0; t < D; t += COLS) {
      vf acc[ROWS][COLS];
      block_product(dsi, Mp, 1, k + t, 1, stride, M, acc);
      store(acc, dq + i * stride + t, stride);
    }
  }
  column_blocks<D>(a, ds, Mp, dout, out_stride, q, stride, M, P.rows, dv, dk, stride);
}

// Block of LANES samples per task; x's columns [q_1..q_H, k_1..k_H, v_1..v_H], each D wide.
// The lane-major buffers have Mp rows (gather writes the first M). T, the type of x and out, is
// float or at::BFloat16; the attention itself is float32 either way.
template <int D, typename T>
void forward_all(const T* x, int64_t B, int64_t M, int64_t H, T* out) {
  const int64_t C = 3 * H * D, O = H * D, Mp = Padding(M).all, blocks = (B + LANES - 1) / LANES;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vf> xb(Mp * C), ob(Mp * O), a(ROWS * Mp);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * LANES;
      const int valid = static_cast<int>(std::min<int64_t>(LANES, B - b0));
      gather(x + b0 * M * C, M * C, M * C, valid, xb.data());
      for (int64_t h = 0; h < H; ++h)
        forward_head<D>(xb.data() + h * D, xb.data() + (H + h) * D, xb.data() + (2 * H + h) * D, C, M, a.data(),
                        ob.data() + h * D, O);
      scatter(ob.data(), M * O, valid, out + b0 * M * O, M * O);
    }
  });
}

template <int D, typename T>
void backward_all(const T* x, const T* gout, int64_t B, int64_t M, int64_t H, T* grad) {
  const int64_t C = 3 * H * D, O = H * D, Mp = Padding(M).all, blocks = (B + LANES - 1) / LANES;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vf> xb(Mp * C), gb(Mp * O), db(Mp * C), a(Mp * Mp), ds(Mp * Mp);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * LANES;
      const int valid = static_cast<int>(std::min<int64_t>(LANES, B - b0));
      gather(x + b0 * M * C, M * C, M * C, valid, xb.data());
      gather(gout + b0 * M * O, M * O, M * O, valid, gb.data());
      for (int64_t h = 0; h < H; ++h)
        backward_head<D>(xb.data() + h * D, xb.data() + (H + h) * D, xb.data() + (2 * H + h) * D, C,
                         gb.data() + h * D, O, M, db.data() + h * D, db.data() + (H + h) * D,
                         db.data() + (2 * H + h) * D, a.data(), ds.data());
      scatter(db.data(), M * C, valid, grad + b0 * M * C, M * C);
    }
  });
}

#if defined(__AVX512BF16__)
// The bf16 path in bf16 arithmetic. Each product needs its two operands paired along its sum:
// scores q k^T and dO v^T along d' (q, k, v, dO "by d'", pairs m * stride + t/2), out = a v and
// dq = ds k along j, dv = a^T dO and dk = ds^T q along i (v, k, dO, q "by fields", pairs m/2 * D + t;
// a's and ds's rows paired for the first two, columns for the last two). A bf16 row's consecutive
// elements t, t+1 (t even) are one 32-bit word, so gathering 32-bit words as gather gathers floats
// gives every operand by d' directly, unconverted; by fields is one pass over it per head. a and ds
// are computed in float32 and rounded to bf16 as they are paired.

// Lane-major 32-bit words of LANES samples' first n / 2 bf16 pairs (samples `sample` elements
// apart; n and sample even): dst[w] lane l = elements 2w, 2w+1 of sample l, lanes past `valid` 0.
// As gather, the bits moved as they are.
void gather_pairs(const at::BFloat16* src, int64_t sample, int64_t n, int valid, vb* dst) {
  const int64_t words = n / 2;
  int64_t w = 0;
  for (; w + LANES <= words; w += LANES) {
    __m512 r[16];
    for (int l = 0; l < valid; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(src + l * sample + 2 * w + AHEAD<at::BFloat16>), _MM_HINT_T0);
    for (int l = 0; l < LANES; ++l)
      r[l] = l < valid ? _mm512_loadu_ps(reinterpret_cast<const float*>(src + l * sample + 2 * w)) : _mm512_setzero_ps();
    transpose16(r);
    for (int c = 0; c < LANES; ++c) std::memcpy(&dst[w + c], &r[c], sizeof(vb));
  }
  for (; w < words; ++w) {
    uint32_t x[LANES] = {};
    for (int l = 0; l < valid; ++l) std::memcpy(&x[l], src + l * sample + 2 * w, sizeof(uint32_t));
    std::memcpy(&dst[w], x, sizeof(vb));
  }
}

// One head's operand by d' (D/2 pairs a row, rows `stride` pairs apart) by fields: dst[p * D + t] =
// (x_2p,t, x_2p+1,t) for p < ceil(M / 2), an odd M's last pair with 0. Rows m and m+1's words
// (x_m,t, x_m,t+1) and (x_m+1,t, x_m+1,t+1) give words t and t+1 by their low and high halves.
template <int D>
void pair_by_fields(const vb* x, int64_t stride, int64_t M, vb* dst) {
  constexpr __mmask32 HIGH = 0xAAAAAAAA;  // the high bf16 of every 32-bit word
  for (int64_t p = 0; 2 * p < M; ++p) {
    const vb* lo = x + 2 * p * stride;
    const vb* hi = lo + stride;
    for (int w = 0; w < D / 2; ++w) {
      const __m512i a = (__m512i)lo[w], b = 2 * p + 1 < M ? (__m512i)hi[w] : _mm512_setzero_si512();
      dst[p * D + 2 * w] = (vb)_mm512_mask_blend_epi16(HIGH, a, _mm512_slli_epi32(b, 16));
      dst[p * D + 2 * w + 1] = (vb)_mm512_mask_blend_epi16(HIGH, _mm512_srli_epi32(a, 16), b);
    }
  }
}

// One head's forward as forward_head: q, k by d' (rows `stride` pairs apart, P.all of them),
// vfld by fields; a is ROWS x Mp float32 scratch, ap ROWS x ceil(M / 2) pairs.
template <int D>
void forward_head_pairs(const vb* q, const vb* k, int64_t stride, const vb* vfld, int64_t M, vf* a, vb* ap, vf* out,
                        int64_t out_stride) {
  const Padding P(M);
  const int64_t Mp = P.all, Mh = (M + 1) / 2;
  for (int64_t i = 0; i < P.rows; i += ROWS) {
    probabilities<D / 2>(q + i * stride, k, stride, M, P, a);
    pair_up(a, Mp, 1, ROWS, M, ap, Mh, 1);
    for (int t = 0; t < D; t += COLS) {
      vf acc[ROWS][COLS];
      block_product(ap, Mh, 1, vfld + t, 1, D, Mh, acc);
      store(acc, out + i * out_stride + t, out_stride);
    }
  }
}

// One head's backward as backward_head: q, k, v by d' (rows `stride` pairs apart), dout by d' (rows
// `out_stride` pairs apart), qf, kf, dof by fields; a, ds are Mp x Mp float32 scratch, dsp ROWS x
// ceil(M / 2) pairs, ap and dsc ceil(M / 2) x Mp pairs.
template <int D>
void backward_head_pairs(const vb* q, const vb* k, const vb* v, int64_t stride, const vb* dout, int64_t out_stride,
                         const vb* qf, const vb* kf, const vb* dof, int64_t M, vf* dq, vf* dk, vf* dv,
                         int64_t grad_stride, vf* a, vf* ds, vb* dsp, vb* ap, vb* dsc) {
  const Padding P(M);
  const int64_t Mp = P.all, Mh = (M + 1) / 2;
  for (int64_t i = 0; i < P.rows; i += ROWS) {
    vf* ai = a + i * Mp;
    vf* dsi = ds + i * Mp;
    probabilities<D / 2>(q + i * stride, k, stride, M, P, ai);
    for (int64_t j = 0; j < P.cols; j += COLS) {
      vf acc[ROWS][COLS];
      block_product(dout + i * out_stride, out_stride, 1, v + j * stride, stride, 1, D / 2, acc);
      store(acc, dsi + j, Mp);
    }
    softmax_backward(ai, M, Mp, dsi);
    pair_up(dsi, Mp, 1, ROWS, M, dsp, Mh, 1);
    for (int t = 0; t < D; t += COLS) {
      vf acc[ROWS][COLS];
      block_product(dsp, Mh, 1, kf + t, 1, D, Mh, acc);
      store(acc, dq + i * grad_stride + t, grad_stride);
    }
  }
  // a's and ds's columns paired along i, for the column blocks' sums over i (rows >= M left out)
  pair_up(a, 1, Mp, P.rows, M, ap, 1, Mp);
  pair_up(ds, 1, Mp, P.rows, M, dsc, 1, Mp);
  column_blocks<D>(ap, dsc, Mp, dof, D, qf, D, Mh, P.rows, dv, dk, grad_stride);
}

// forward_all and backward_all for bf16 x with the products in bf16 arithmetic. The by-d' buffers
// have Mp rows of C / 2 (O / 2) pairs; rows past M stay 0, as in forward_all.
template <int D>
void forward_all_pairs(const at::BFloat16* x, int64_t B, int64_t M, int64_t H, at::BFloat16* out) {
  const int64_t C = 3 * H * D, O = H * D, Mp = Padding(M).all, Mh = (M + 1) / 2, blocks = (B + LANES - 1) / LANES;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vb> xb(Mp * C / 2), vfld(Mh * D), ap(ROWS * Mh);
    std::vector<vf> ob(Mp * O), a(ROWS * Mp);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * LANES;
      const int valid = static_cast<int>(std::min<int64_t>(LANES, B - b0));
      gather_pairs(x + b0 * M * C, M * C, M * C, valid, xb.data());
      for (int64_t h = 0; h < H; ++h) {
        pair_by_fields<D>(xb.data() + (2 * H + h) * D / 2, C / 2, M, vfld.data());
        forward_head_pairs<D>(xb.data() + h * D / 2, xb.data() + (H + h) * D / 2, C / 2, vfld.data(), M, a.data(),
                              ap.data(), ob.data() + h * D, O);
      }
      scatter(ob.data(), M * O, valid, out + b0 * M * O, M * O);
    }
  });
}

template <int D>
void backward_all_pairs(const at::BFloat16* x, const at::BFloat16* gout, int64_t B, int64_t M, int64_t H,
                        at::BFloat16* grad) {
  const int64_t C = 3 * H * D, O = H * D, Mp = Padding(M).all, Mh = (M + 1) / 2, blocks = (B + LANES - 1) / LANES;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vb> xb(Mp * C / 2), gb(Mp * O / 2), qf(Mh * D), kf(Mh * D), dof(Mh * D), dsp(ROWS * Mh), ap(Mh * Mp),
        dsc(Mh * Mp);
    std::vector<vf> db(Mp * C), a(Mp * Mp), ds(Mp * Mp);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * LANES;
      const int valid = static_cast<int>(std::min<int64_t>(LANES, B - b0));
      gather_pairs(x + b0 * M * C, M * C, M * C, valid, xb.data());
      gather_pairs(gout + b0 * M * O, M * O, M * O, valid, gb.data());
      for (int64_t h = 0; h < H; ++h) {
        const vb *q = xb.data() + h * D / 2, *k = xb.data() + (H + h) * D / 2, *v = xb.data() + (2 * H + h) * D / 2,
                 *dout = gb.data() + h * D / 2;
        pair_by_fields<D>(q, C / 2, M, qf.data());
        pair_by_fields<D>(k, C / 2, M, kf.data());
        pair_by_fields<D>(dout, O / 2, M, dof.data());
        backward_head_pairs<D>(q, k, v, C / 2, dout, O / 2, qf.data(), kf.data(), dof.data(), M, db.data() + h * D,
                               db.data() + (H + h) * D, db.data() + (2 * H + h) * D, C, a.data(), ds.data(),
                               dsp.data(), ap.data(), dsc.data());
      }
      scatter(db.data(), M * C, valid, grad + b0 * M * C, M * C);
    }
  });
}
#endif

#define DISPATCH_HEAD_DIM(d, FN, ...)                                                            \
  switch (d) {                                                                                   \
    case 4: FN<4>(__VA_ARGS__); break;                                                           \
    case 8: FN<8>(__VA_ARGS__); break;                                                           \
    case 16: FN<16>(__VA_ARGS__); break;                                                         \
    case 32: FN<32>(__VA_ARGS__); break;                                                         \
    case 64: FN<64>(__VA_ARGS__); break;                                                         \
    default: TORCH_CHECK(false, "field attention: head_dim must be one of 4, 8, 16, 32, 64, got ", d); \
  }

bool is_float_or_bf16(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

void check_qkv(const at::Tensor& qkv, int64_t heads, int64_t head_dim) {
  TORCH_CHECK(qkv.device().is_cpu() && is_float_or_bf16(qkv) && qkv.dim() == 3,
              "field attention: qkv must be a float32 or bfloat16 CPU tensor B x M x 3Hd, got ", qkv.scalar_type(), " ",
              qkv.sizes());
  TORCH_CHECK(heads > 0 && qkv.size(2) == 3 * heads * head_dim, "field attention: qkv's last dimension ", qkv.size(2),
              " is not 3 * heads (", heads, ") * head_dim (", head_dim, ")");
}

template <typename T>
void forward_typed(const at::Tensor& qkv, int64_t heads, int64_t head_dim, at::Tensor& out) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    DISPATCH_HEAD_DIM(head_dim, forward_all_pairs, qkv.data_ptr<T>(), qkv.size(0), qkv.size(1), heads,
                      out.data_ptr<T>());
    return;
  }
#endif
  DISPATCH_HEAD_DIM(head_dim, forward_all, qkv.data_ptr<T>(), qkv.size(0), qkv.size(1), heads, out.data_ptr<T>());
}

template <typename T>
void backward_typed(const at::Tensor& gout, const at::Tensor& qkv, int64_t heads, int64_t head_dim, at::Tensor& grad) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    DISPATCH_HEAD_DIM(head_dim, backward_all_pairs, qkv.data_ptr<T>(), gout.data_ptr<T>(), qkv.size(0), qkv.size(1),
                      heads, grad.data_ptr<T>());
    return;
  }
#endif
  DISPATCH_HEAD_DIM(head_dim, backward_all, qkv.data_ptr<T>(), gout.data_ptr<T>(), qkv.size(0), qkv.size(1), heads,
                    grad.data_ptr<T>());
}

// Whether bf16 input is attended in bf16 arithmetic (this build targets AVX512-BF16).
bool bf16_arithmetic() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// qkv: B x M x 3Hd (columns q_1..q_H, k_1..k_H, v_1..v_H) -> B x M x Hd of qkv's dtype. A bf16
// output is the float32 result rounded (what autocast's next GEMM would round it to anyway):
// measured in a bf16 training step against a float32 output, it saves the casts both ways.
at::Tensor field_attention_forward(const at::Tensor& qkv_in, int64_t heads, int64_t head_dim) {
  check_qkv(qkv_in, heads, head_dim);
  const at::Tensor qkv = qkv_in.contiguous();
  at::Tensor out = at::empty({qkv.size(0), qkv.size(1), heads * head_dim}, qkv.options());
  if (qkv.scalar_type() == at::kBFloat16)
    forward_typed<at::BFloat16>(qkv, heads, head_dim, out);
  else
    forward_typed<float>(qkv, heads, head_dim, out);
  return out;
}

// d(loss)/d(qkv) from d(loss)/d(out), both of qkv's dtype (bf16: the float32 gradient rounded).
at::Tensor field_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv_in, int64_t heads, int64_t head_dim) {
  check_qkv(qkv_in, heads, head_dim);
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor gout = grad_out.contiguous();
  const int64_t B = qkv.size(0), M = qkv.size(1);
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({B, M, heads * head_dim}), "field attention: grad_out is ", gout.sizes(),
              ", expected ", at::IntArrayRef({B, M, heads * head_dim}));
  TORCH_CHECK(gout.scalar_type() == qkv.scalar_type(), "field attention: grad_out is ", gout.scalar_type(),
              ", qkv is ", qkv.scalar_type());
  at::Tensor grad = at::empty_like(qkv);
  if (qkv.scalar_type() == at::kBFloat16)
    backward_typed<at::BFloat16>(gout, qkv, heads, head_dim, grad);
  else
    backward_typed<float>(gout, qkv, heads, head_dim, grad);
  return grad;
}

// One whole interacting layer, ReLU(attention(x W_qkv^T) + x W_res^T) (Eq. 7-11), in chunks of `rows`
// samples, each chunk on one core from its projection to its ReLU. Split across cores op by op instead,
// the layer's 30 MB of projections at B = 1024 (float32) leave the cache between the GEMM that writes
// them and the kernel that reads them, and every tall GEMM shares the memory bus with the other core's
// half of it; a chunk's projections (~1 MB at 32 samples, d' = 32, M = 39) stay in the core's L2. The
// GEMMs inside a chunk are ATen's, single-threaded there (nested in at::parallel_for, as the attention
// kernel's own loop over sample blocks is). x: B x M x K; w_qkv: 3Hd x K; w_res: Hd x K; all float32
// or all bf16 (bf16: the GEMMs in bf16 with float32 sums, the attention as field_attention_forward's).
// Returns out (B x M x Hd, after the ReLU) and, with keep_qkv (training: the backward reads them), the
// projections B x M x 3Hd; without, each chunk's projections live in a per-core scratch buffer.
template <typename T>
void layer_forward_chunk(const at::Tensor& x, const at::Tensor& w_qkv, const at::Tensor& w_res, int64_t heads,
                         int64_t head_dim, at::Tensor& qkv, at::Tensor& out) {
  const int64_t n = x.size(0), M = x.size(1), K = x.size(2);
  at::Tensor projections = qkv.view({n * M, qkv.size(2)});
  at::mm_out(projections, x.view({n * M, K}), w_qkv.t());
  forward_typed<T>(qkv, heads, head_dim, out);
  at::Tensor flat = out.view({n * M, out.size(2)});
  flat.addmm_(x.view({n * M, K}), w_res.t());
  flat.relu_();
}

void check_layer(const at::Tensor& x, const at::Tensor& w_qkv, const at::Tensor& w_res, int64_t heads,
                 int64_t head_dim, int64_t rows) {
  TORCH_CHECK(x.device().is_cpu() && is_float_or_bf16(x) && x.dim() == 3 && x.is_contiguous(),
              "interacting layer: x must be a contiguous float32 or bfloat16 CPU tensor B x M x K, got ",
              x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(w_qkv.scalar_type() == x.scalar_type() && w_res.scalar_type() == x.scalar_type(),
              "interacting layer: the weights must have x's dtype ", x.scalar_type(), ", got ", w_qkv.scalar_type(),
              " and ", w_res.scalar_type());
  TORCH_CHECK(w_qkv.dim() == 2 && w_qkv.size(0) == 3 * heads * head_dim && w_qkv.size(1) == x.size(2),
              "interacting layer: w_qkv is ", w_qkv.sizes(), ", expected [", 3 * heads * head_dim, ", ", x.size(2), "]");
  TORCH_CHECK(w_res.dim() == 2 && w_res.size(0) == heads * head_dim && w_res.size(1) == x.size(2),
              "interacting layer: w_res is ", w_res.sizes(), ", expected [", heads * head_dim, ", ", x.size(2), "]");
  TORCH_CHECK(rows > 0, "interacting layer: rows must be positive, got ", rows);
}

template <typename T>
void layer_forward_all(const at::Tensor& x, const at::Tensor& w_qkv, const at::Tensor& w_res, int64_t heads,
                       int64_t head_dim, int64_t rows, bool keep_qkv, at::Tensor& qkv, at::Tensor& out) {
  const int64_t B = x.size(0), M = x.size(1), C = 3 * heads * head_dim, chunks = (B + rows - 1) / rows;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // per thread: the GEMMs are not recorded
    at::Tensor scratch = keep_qkv ? at::Tensor() : at::empty({rows, M, C}, x.options());
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r0 = c * rows, n = std::min(rows, B - r0);
      at::Tensor q = keep_qkv ? qkv.narrow(0, r0, n) : scratch.narrow(0, 0, n), o = out.narrow(0, r0, n);
      layer_forward_chunk<T>(x.narrow(0, r0, n), w_qkv, w_res, heads, head_dim, q, o);
    }
  });
}

std::vector<at::Tensor> interacting_layer_forward(const at::Tensor& x, const at::Tensor& w_qkv_in,
                                                  const at::Tensor& w_res_in, int64_t heads, int64_t head_dim,
                                                  int64_t rows, bool keep_qkv) {
  check_layer(x, w_qkv_in, w_res_in, heads, head_dim, rows);
  const at::Tensor w_qkv = w_qkv_in.contiguous(), w_res = w_res_in.contiguous();
  const int64_t B = x.size(0), M = x.size(1), C = 3 * heads * head_dim, O = heads * head_dim;
  at::Tensor out = at::empty({B, M, O}, x.options());
  at::Tensor qkv = at::empty({keep_qkv ? B : 0, M, C}, x.options());
  if (x.scalar_type() == at::kBFloat16)
    layer_forward_all<at::BFloat16>(x, w_qkv, w_res, heads, head_dim, rows, keep_qkv, qkv, out);
  else
    layer_forward_all<float>(x, w_qkv, w_res, heads, head_dim, rows, keep_qkv, qkv, out);
  return {out, qkv};
}

template <typename T>
void layer_backward_chunk(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& qkv, const at::Tensor& out,
                          const at::Tensor& w_qkv, const at::Tensor& w_res, int64_t heads, int64_t head_dim,
                          at::Tensor& masked, at::Tensor& grad_qkv, at::Tensor& grad_x, at::Tensor& grad_w_qkv,
                          at::Tensor& grad_w_res) {
  const int64_t n = x.size(0), M = x.size(1), K = x.size(2), C = qkv.size(2), O = out.size(2);
  at::threshold_backward_out(masked, grad_out, out, 0);  // through the ReLU: out > 0 where its input was
  backward_typed<T>(masked, qkv, heads, head_dim, grad_qkv);
  const at::Tensor x2 = x.view({n * M, K}), gq = grad_qkv.view({n * M, C}), gm = masked.view({n * M, O});
  at::Tensor gx = grad_x.view({n * M, K});
  at::mm_out(gx, gq, w_qkv);
  gx.addmm_(gm, w_res);
  grad_w_qkv.add_(at::mm(gq.t(), x2));  // into this core's float32 total (a bf16 chunk's sum rounded once)
  grad_w_res.add_(at::mm(gm.t(), x2));
}

// Gradients of interacting_layer_forward's out for x, w_qkv and w_res, chunk by chunk as the forward
// ran; each core sums its chunks' weight gradients in float32, the cores' sums are added at the end and
// returned in x's dtype.
template <typename T>
void layer_backward_all(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& qkv, const at::Tensor& out,
                        const at::Tensor& w_qkv, const at::Tensor& w_res, int64_t heads, int64_t head_dim, int64_t rows,
                        at::Tensor& grad_x, at::Tensor& grad_w_qkv, at::Tensor& grad_w_res) {
  const int64_t B = x.size(0), M = x.size(1), C = 3 * heads * head_dim, O = heads * head_dim;
  const int64_t chunks = (B + rows - 1) / rows;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor masked = at::empty({rows, M, O}, x.options()), grad_qkv = at::empty({rows, M, C}, x.options());
    at::Tensor gwq = grad_w_qkv[at::get_thread_num()], gwr = grad_w_res[at::get_thread_num()];
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r0 = c * rows, n = std::min(rows, B - r0);
      at::Tensor m = masked.narrow(0, 0, n), g = grad_qkv.narrow(0, 0, n), gx = grad_x.narrow(0, r0, n);
      layer_backward_chunk<T>(grad_out.narrow(0, r0, n), x.narrow(0, r0, n), qkv.narrow(0, r0, n), out.narrow(0, r0, n),
                              w_qkv, w_res, heads, head_dim, m, g, gx, gwq, gwr);
    }
  });
}

std::vector<at::Tensor> interacting_layer_backward(const at::Tensor& grad_out_in, const at::Tensor& x,
                                                   const at::Tensor& qkv, const at::Tensor& out,
                                                   const at::Tensor& w_qkv_in, const at::Tensor& w_res_in,
                                                   int64_t heads, int64_t head_dim, int64_t rows) {
  check_layer(x, w_qkv_in, w_res_in, heads, head_dim, rows);
  const at::Tensor w_qkv = w_qkv_in.contiguous(), w_res = w_res_in.contiguous(), grad_out = grad_out_in.contiguous();
  const int64_t B = x.size(0), M = x.size(1), K = x.size(2), C = 3 * heads * head_dim, O = heads * head_dim;
  TORCH_CHECK(grad_out.sizes() == out.sizes() && qkv.sizes() == at::IntArrayRef({B, M, C}) &&
                  grad_out.scalar_type() == x.scalar_type(),
              "interacting layer: grad_out ", grad_out.sizes(), ", out ", out.sizes(), ", qkv ", qkv.sizes(),
              " do not match x ", x.sizes());
  at::Tensor grad_x = at::empty_like(x);
  const int64_t threads = at::get_num_threads();
  at::Tensor grad_w_qkv = at::zeros({threads, C, K}, x.options().dtype(at::kFloat));
  at::Tensor grad_w_res = at::zeros({threads, O, K}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kBFloat16)
    layer_backward_all<at::BFloat16>(grad_out, x, qkv, out, w_qkv, w_res, heads, head_dim, rows, grad_x, grad_w_qkv,
                                     grad_w_res);
  else
    layer_backward_all<float>(grad_out, x, qkv, out, w_qkv, w_res, heads, head_dim, rows, grad_x, grad_w_qkv,
                              grad_w_res);
  return {grad_x, grad_w_qkv.sum(0).to(x.scalar_type()), grad_w_res.sum(0).to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY(iarm, m) {
  m.def("field_attention_forward(Tensor qkv, int heads, int head_dim) -> Tensor");
  m.def("field_attention_backward(Tensor grad_out, Tensor qkv, int heads, int head_dim) -> Tensor");
  m.def("field_attention_bf16_arithmetic() -> bool", &bf16_arithmetic);
  m.def("interacting_layer_forward(Tensor x, Tensor w_qkv, Tensor w_res, int heads, int head_dim, int rows, bool keep_qkv) -> Tensor[]");
  m.def("interacting_layer_backward(Tensor grad_out, Tensor x, Tensor qkv, Tensor out, Tensor w_qkv, Tensor w_res, int heads, int head_dim, int rows) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(iarm, CPU, m) {
  m.impl("field_attention_forward", &field_attention_forward);
  m.impl("field_attention_backward", &field_attention_backward);
  m.impl("interacting_layer_forward", &interacting_layer_forward);
  m.impl("interacting_layer_backward", &interacting_layer_backward);
}
