// IARM's multi-head field attention (paper Eq. 7-10) for CPU, vectorised across samples.
//
// CTR models attend over few fields (M ~ 10-100) with small heads (d' ~ 4-64). Per sample these
// matrices are far too small for a GEMM library, and a softmax over rows of M floats wastes vector
// lanes. Here each SIMD lane holds one sample: a block of LANES samples is transposed to lane-major
// vectors, goes through the plain per-sample algorithm with every float replaced by a LANES-wide
// vector (full-width FMAs, no shuffles, no horizontal reductions), and is transposed back.
//
// Registered as torch.ops.iarm.field_attention_forward / field_attention_backward; the autograd
// wiring and the build live in iarm_torchrec/kernels/field_attention.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
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
// In-register transpose of 16 rows of 16 floats.
inline void transpose16(__m512 r[16]) {
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

// Lane-major copy of LANES samples' first n floats (samples `sample` floats apart):
// dst[e][l] = src[l * sample + e]; lanes past `valid` are 0.
void gather(const float* src, int64_t sample, int64_t n, int valid, vf* dst) {
  int64_t e = 0;
#if defined(__AVX512F__)
  for (; e + LANES <= n; e += LANES) {
    __m512 r[16];
    for (int l = 0; l < LANES; ++l) r[l] = l < valid ? _mm512_loadu_ps(src + l * sample + e) : _mm512_setzero_ps();
    transpose16(r);
    for (int c = 0; c < LANES; ++c) std::memcpy(&dst[e + c], &r[c], sizeof(vf));
  }
#endif
  for (; e < n; ++e) {
    vf x = vf{};
    for (int l = 0; l < valid; ++l) x[l] = src[l * sample + e];
    dst[e] = x;
  }
}

// The inverse of gather for the first `valid` lanes.
void scatter(const vf* src, int64_t n, int valid, float* dst, int64_t sample) {
  int64_t e = 0;
#if defined(__AVX512F__)
  for (; e + LANES <= n; e += LANES) {
    __m512 r[16];
    for (int c = 0; c < LANES; ++c) std::memcpy(&r[c], &src[e + c], sizeof(vf));
    transpose16(r);
    for (int l = 0; l < valid; ++l) _mm512_storeu_ps(dst + l * sample + e, r[l]);
  }
#endif
  for (; e < n; ++e) {
    const vf x = src[e];
    for (int l = 0; l < valid; ++l) dst[l * sample + e] = x[l];
  }
}

// One head on LANES samples: row m of q (and of k, v) is the D vectors at q + m * stride.
// a[i * M + j] = softmax_j <q_i, k_j> (Eq. 7-8).
template <int D>
void probabilities(const vf* q, const vf* k, int64_t stride, int64_t M, vf* a) {
  for (int64_t i = 0; i < M; ++i) {
    vf* ai = a + i * M;
    const vf* qi = q + i * stride;
    vf mx = splat(-3.0e38f);
    int64_t j = 0;
    for (; j + 4 <= M; j += 4) {  // four independent FMA chains (one chain is latency-bound at d' = 32)
      const vf *k0 = k + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
      vf s0 = qi[0] * k0[0], s1 = qi[0] * k1[0], s2 = qi[0] * k2[0], s3 = qi[0] * k3[0];
      for (int t = 1; t < D; ++t) {
        s0 += qi[t] * k0[t];
        s1 += qi[t] * k1[t];
        s2 += qi[t] * k2[t];
        s3 += qi[t] * k3[t];
      }
      ai[j] = s0, ai[j + 1] = s1, ai[j + 2] = s2, ai[j + 3] = s3;
      mx = s0 > mx ? s0 : mx;
      mx = s1 > mx ? s1 : mx;
      mx = s2 > mx ? s2 : mx;
      mx = s3 > mx ? s3 : mx;
    }
    for (; j < M; ++j) {
      const vf* kj = k + j * stride;
      vf s = qi[0] * kj[0];
      for (int t = 1; t < D; ++t) s += qi[t] * kj[t];
      ai[j] = s;
      mx = s > mx ? s : mx;
    }
    vf sum = vf{};
    for (int64_t j = 0; j < M; ++j) {
      ai[j] = exp_nonpositive(ai[j] - mx);
      sum += ai[j];
    }
    const vf inv = splat(1.0f) / sum;
    for (int64_t j = 0; j < M; ++j) ai[j] *= inv;
  }
}

// Accumulators per pass: AVX-512 has 32 vector registers, so a pass keeps at most 16 output
// vectors in flight (d' = 32 or 64 go in column chunks; every element is still summed over j in
// the same order, so the results do not depend on the chunking).
template <int D>
constexpr int chunk(int most) { return D < most ? D : most; }

// out_i = sum_j a_ij v_j (Eq. 9), written at out + i * out_stride.
template <int D>
void forward_head(const vf* q, const vf* k, const vf* v, int64_t stride, int64_t M, vf* a, vf* out,
                  int64_t out_stride) {
  constexpr int T = chunk<D>(16);
  probabilities<D>(q, k, stride, M, a);
  for (int64_t i = 0; i < M; ++i) {
    const vf* ai = a + i * M;
    for (int c = 0; c < D; c += T) {
      vf acc[T];
      for (int t = 0; t < T; ++t) acc[t] = vf{};
      for (int64_t j = 0; j < M; ++j) {
        const vf* vj = v + j * stride + c;
        for (int t = 0; t < T; ++t) acc[t] += ai[j] * vj[t];
      }
      for (int t = 0; t < T; ++t) out[i * out_stride + c + t] = acc[t];
    }
  }
}

// Gradients of forward_head into dq, dk, dv (laid out as q, k, v). The probabilities are
// recomputed into `a` (cheaper than keeping B H M^2 floats between forward and backward);
// ds is M x M scratch.
template <int D>
void backward_head(const vf* q, const vf* k, const vf* v, int64_t stride, const vf* dout, int64_t out_stride,
                   int64_t M, vf* dq, vf* dk, vf* dv, vf* a, vf* ds) {
  constexpr int T = chunk<D>(16), C = chunk<D>(8);
  probabilities<D>(q, k, stride, M, a);
  for (int64_t i = 0; i < M; ++i) {  // rows: dS_ij = a_ij (<dO_i, v_j> - sum_k a_ik <dO_i, v_k>), dQ_i
    const vf* ai = a + i * M;
    const vf* gi = dout + i * out_stride;
    vf* dsi = ds + i * M;
    vf dot = vf{};
    int64_t j = 0;
    for (; j + 4 <= M; j += 4) {  // four independent chains, as in probabilities()
      const vf *v0 = v + j * stride, *v1 = v0 + stride, *v2 = v1 + stride, *v3 = v2 + stride;
      vf g0 = gi[0] * v0[0], g1 = gi[0] * v1[0], g2 = gi[0] * v2[0], g3 = gi[0] * v3[0];
      for (int t = 1; t < D; ++t) {
        g0 += gi[t] * v0[t];
        g1 += gi[t] * v1[t];
        g2 += gi[t] * v2[t];
        g3 += gi[t] * v3[t];
      }
      dsi[j] = g0, dsi[j + 1] = g1, dsi[j + 2] = g2, dsi[j + 3] = g3;
      dot += ai[j] * g0;
      dot += ai[j + 1] * g1;
      dot += ai[j + 2] * g2;
      dot += ai[j + 3] * g3;
    }
    for (; j < M; ++j) {
      const vf* vj = v + j * stride;
      vf g = gi[0] * vj[0];
      for (int t = 1; t < D; ++t) g += gi[t] * vj[t];
      dsi[j] = g;
      dot += ai[j] * g;
    }
    for (int64_t j = 0; j < M; ++j) dsi[j] = ai[j] * (dsi[j] - dot);
    for (int c = 0; c < D; c += T) {
      vf acc[T];
      for (int t = 0; t < T; ++t) acc[t] = vf{};
      for (int64_t j = 0; j < M; ++j) {
        const vf* kj = k + j * stride + c;
        for (int t = 0; t < T; ++t) acc[t] += dsi[j] * kj[t];
      }
      for (int t = 0; t < T; ++t) dq[i * stride + c + t] = acc[t];
    }
  }
  for (int64_t j = 0; j < M; ++j) {  // columns: dV_j = sum_i a_ij dO_i, dK_j = sum_i dS_ij q_i
    for (int c = 0; c < D; c += C) {
      vf av[C], ak[C];
      for (int t = 0; t < C; ++t) av[t] = ak[t] = vf{};
      for (int64_t i = 0; i < M; ++i) {
        const vf aij = a[i * M + j], sij = ds[i * M + j];
        const vf* gi = dout + i * out_stride + c;
        const vf* qi = q + i * stride + c;
        for (int t = 0; t < C; ++t) {
          av[t] += aij * gi[t];
          ak[t] += sij * qi[t];
        }
      }
      for (int t = 0; t < C; ++t) {
        dv[j * stride + c + t] = av[t];
        dk[j * stride + c + t] = ak[t];
      }
    }
  }
}

// Block of LANES samples per task; x's columns [q_1..q_H, k_1..k_H, v_1..v_H], each D wide.
template <int D>
void forward_all(const float* x, int64_t B, int64_t M, int64_t H, float* out) {
  const int64_t C = 3 * H * D, O = H * D, blocks = (B + LANES - 1) / LANES;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vf> xb(M * C), ob(M * O), a(M * M);
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

template <int D>
void backward_all(const float* x, const float* gout, int64_t B, int64_t M, int64_t H, float* grad) {
  const int64_t C = 3 * H * D, O = H * D, blocks = (B + LANES - 1) / LANES;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vf> xb(M * C), gb(M * O), db(M * C), a(M * M), ds(M * M);
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

#define DISPATCH_HEAD_DIM(d, FN, ...)                                                            \
  switch (d) {                                                                                   \
    case 4: FN<4>(__VA_ARGS__); break;                                                           \
    case 8: FN<8>(__VA_ARGS__); break;                                                           \
    case 16: FN<16>(__VA_ARGS__); break;                                                         \
    case 32: FN<32>(__VA_ARGS__); break;                                                         \
    case 64: FN<64>(__VA_ARGS__); break;                                                         \
    default: TORCH_CHECK(false, "field attention: head_dim must be one of 4, 8, 16, 32, 64, got ", d); \
  }

void check_qkv(const at::Tensor& qkv, int64_t heads, int64_t head_dim) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == at::kFloat && qkv.dim() == 3,
              "field attention: qkv must be a float32 CPU tensor B x M x 3Hd, got ", qkv.scalar_type(), " ", qkv.sizes());
  TORCH_CHECK(heads > 0 && qkv.size(2) == 3 * heads * head_dim, "field attention: qkv's last dimension ", qkv.size(2),
              " is not 3 * heads (", heads, ") * head_dim (", head_dim, ")");
}

// qkv: B x M x 3Hd (columns q_1..q_H, k_1..k_H, v_1..v_H) -> B x M x Hd.
at::Tensor field_attention_forward(const at::Tensor& qkv_in, int64_t heads, int64_t head_dim) {
  check_qkv(qkv_in, heads, head_dim);
  const at::Tensor qkv = qkv_in.contiguous();
  at::Tensor out = at::empty({qkv.size(0), qkv.size(1), heads * head_dim}, qkv.options());
  DISPATCH_HEAD_DIM(head_dim, forward_all, qkv.data_ptr<float>(), qkv.size(0), qkv.size(1), heads, out.data_ptr<float>());
  return out;
}

// d(loss)/d(qkv) from d(loss)/d(out).
at::Tensor field_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv_in, int64_t heads, int64_t head_dim) {
  check_qkv(qkv_in, heads, head_dim);
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor gout = grad_out.contiguous();
  const int64_t B = qkv.size(0), M = qkv.size(1);
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({B, M, heads * head_dim}), "field attention: grad_out is ", gout.sizes(),
              ", expected ", at::IntArrayRef({B, M, heads * head_dim}));
  at::Tensor grad = at::empty_like(qkv);
  DISPATCH_HEAD_DIM(head_dim, backward_all, qkv.data_ptr<float>(), gout.data_ptr<float>(), B, M, heads,
                    grad.data_ptr<float>());
  return grad;
}

}  // namespace

TORCH_LIBRARY(iarm, m) {
  m.def("field_attention_forward(Tensor qkv, int heads, int head_dim) -> Tensor");
  m.def("field_attention_backward(Tensor grad_out, Tensor qkv, int heads, int head_dim) -> Tensor");
}

TORCH_LIBRARY_IMPL(iarm, CPU, m) {
  m.impl("field_attention_forward", &field_attention_forward);
  m.impl("field_attention_backward", &field_attention_backward);
}
