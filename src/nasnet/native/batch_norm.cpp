// Training-mode BatchNorm of channels_last (pixels, channels) float32 maps, as three passes a
// vector wide: per-channel sums (for the statistics and the gradient's two reductions), and
// two per-channel multiply-adds (the normalised output; the input gradient).
//
// ATen (torch 2.13) runs channels_last BatchNorm with few channels (12-48) at 5-7 GB/s: a
// vector per pixel, lanes past the channels idle. Here the pixels are read as one flat array
// in chunks of lcm(channels, vector lanes) floats, so that every lane is busy and lane l of a
// chunk is always channel l % channels. Sums are kept in double.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vectors.h"

namespace {

// Floats per chunk: a whole number of pixels and of 16-float vectors.
// (Euclid's gcd spelled out: in a GCC 12 -O3 build of this file, std::lcm(1, 16) gave -16;
// not reproduced on its own, and ASan + UBSan builds found nothing, so the cause is unknown.)
int64_t chunk_of(int64_t c) {
  int64_t a = c, b = 16;
  while (b != 0) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return c / a * 16;
}

// How many parts over_parts splits `chunks` chunks into for `threads` threads.
int64_t parts_of(int64_t chunks, int64_t threads) {
  return std::max<int64_t>(1, std::min(threads, chunks));
}

// fn(t, begin, end) for each part t of `chunks` whole chunks of `chunk` floats split over up to
// `threads` threads, [begin, end) the part's flat range.
template <typename F>
void over_parts(int64_t chunks, int64_t chunk, int64_t threads, F&& fn) {
  const int64_t parts = parts_of(chunks, threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
#endif
  for (int64_t t = 0; t < parts; ++t)
    fn(t, chunks * t / parts * chunk, chunks * (t + 1) / parts * chunk);
}

// Chunks summed in float before the sums move to double.
constexpr int64_t kBlock = 16;

// lane_sums for chunks of V vectors: the partial sums stay in registers.
template <int V>
void lane_sums_of(const float* a, const float* b, const float* ka, const float* kb,
                  int64_t begin, int64_t end, double* s1, double* s2) {
  constexpr int64_t chunk = V * 16;
  v16 shift_a[V], shift_b[V];
  for (int v = 0; v < V; ++v) shift_a[v] = load(ka + 16 * v), shift_b[v] = load(kb + 16 * v);
  for (int64_t start = begin; start < end; start += kBlock * chunk) {
    v16 f1[V], f2[V];
    for (int v = 0; v < V; ++v) f1[v] = v16{}, f2[v] = v16{};
    for (int64_t at = start; at < std::min(end, start + kBlock * chunk); at += chunk) {
      for (int v = 0; v < V; ++v) {
        const v16 da = load(a + at + 16 * v) - shift_a[v];
        f1[v] += da;
        f2[v] += da * (load(b + at + 16 * v) - shift_b[v]);
      }
    }
    for (int v = 0; v < V; ++v)
      for (int l = 0; l < 16; ++l) {
        s1[16 * v + l] += f1[v][l];
        s2[16 * v + l] += f2[v][l];
      }
  }
}

// Per-lane sums of a - ka and (a - ka) * (b - kb) over whole chunks of [begin, end) into s1,
// s2 (ka, kb, s1, s2: chunk each).
void lane_sums(const float* a, const float* b, const float* ka, const float* kb, int64_t begin,
               int64_t end, int64_t chunk, double* s1, double* s2) {
  switch (chunk / 16) {
    case 1: return lane_sums_of<1>(a, b, ka, kb, begin, end, s1, s2);
    case 2: return lane_sums_of<2>(a, b, ka, kb, begin, end, s1, s2);
    case 3: return lane_sums_of<3>(a, b, ka, kb, begin, end, s1, s2);
    case 4: return lane_sums_of<4>(a, b, ka, kb, begin, end, s1, s2);
    case 5: return lane_sums_of<5>(a, b, ka, kb, begin, end, s1, s2);
    case 6: return lane_sums_of<6>(a, b, ka, kb, begin, end, s1, s2);
    case 9: return lane_sums_of<9>(a, b, ka, kb, begin, end, s1, s2);
    default: break;
  }
  std::vector<float> f1(chunk), f2(chunk);
  for (int64_t start = begin; start < end; start += kBlock * chunk) {
    std::fill(f1.begin(), f1.end(), 0.0f);
    std::fill(f2.begin(), f2.end(), 0.0f);
    float* p1 = f1.data();
    float* p2 = f2.data();
    for (int64_t at = start; at < std::min(end, start + kBlock * chunk); at += chunk) {
      const float* pa = a + at;
      const float* pb = b + at;
      for (int64_t l = 0; l < chunk; ++l) {
        const float da = pa[l] - ka[l];
        p1[l] += da;
        p2[l] += da * (pb[l] - kb[l]);
      }
    }
    for (int64_t l = 0; l < chunk; ++l) {
      s1[l] += p1[l];
      s2[l] += p2[l];
    }
  }
}

// out[0:c] = per-channel sums of a - ka, out[c:2c] = of (a - ka) * (b - kb), over p pixels of
// c channels (ka, kb: c floats; a shift near the mean keeps float sums exact enough).
// Deterministic for a given thread count.
void channel_sums(const float* a, const float* b, int64_t p, int64_t c,
                            const float* ka, const float* kb, double* out, int64_t threads) {
  const int64_t chunk = chunk_of(c);
  const int64_t total = p * c;
  const int64_t chunks = total / chunk;
  const int64_t parts = parts_of(chunks, threads);
  std::vector<double> sums(parts * 2 * chunk, 0.0);
  std::vector<float> lane_ka(chunk), lane_kb(chunk);
  for (int64_t l = 0; l < chunk; ++l) lane_ka[l] = ka[l % c], lane_kb[l] = kb[l % c];
  over_parts(chunks, chunk, threads, [&](int64_t t, int64_t begin, int64_t end) {
    double* s = sums.data() + t * 2 * chunk;
    lane_sums(a, b, lane_ka.data(), lane_kb.data(), begin, end, chunk, s, s + chunk);
  });
  std::fill(out, out + 2 * c, 0.0);
  for (int64_t t = 0; t < parts; ++t)
    for (int64_t l = 0; l < chunk; ++l) {
      out[l % c] += sums[t * 2 * chunk + l];
      out[c + l % c] += sums[t * 2 * chunk + chunk + l];
    }
  for (int64_t at = chunks * chunk; at < total; ++at) {  // a last part-chunk
    const int64_t ch = at % c;
    const double da = a[at] - ka[ch];
    out[ch] += da;
    out[c + ch] += da * (b[at] - kb[ch]);
  }
}

// out = (a - m[channel]) * u[channel] + v[channel], and + b * w[channel] where b is not null;
// over p pixels of c channels (m, u, v, w: c floats). out may be a or b.
void channel_affine(const float* a, const float* b, float* out, int64_t p, int64_t c,
                              const float* m, const float* u, const float* v, const float* w,
                              int64_t threads) {
  const int64_t chunk = chunk_of(c);
  const int64_t total = p * c;
  const int64_t chunks = total / chunk;
  std::vector<float> mm(chunk), uu(chunk), vv(chunk), ww(chunk);  // per lane of a chunk
  for (int64_t l = 0; l < chunk; ++l) {
    mm[l] = m[l % c];
    uu[l] = u[l % c];
    vv[l] = v[l % c];
    ww[l] = b != nullptr ? w[l % c] : 0.0f;
  }
  const float* pm = mm.data();
  const float* pu = uu.data();
  const float* pv = vv.data();
  const float* pw = ww.data();
  over_parts(chunks, chunk, threads, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t at = begin; at < end; at += chunk) {
      const float* pa = a + at;
      float* po = out + at;
      if (b != nullptr) {
        const float* pb = b + at;
        for (int64_t l = 0; l < chunk; ++l)
          po[l] = (pa[l] - pm[l]) * pu[l] + pb[l] * pw[l] + pv[l];
      } else {
        for (int64_t l = 0; l < chunk; ++l) po[l] = (pa[l] - pm[l]) * pu[l] + pv[l];
      }
    }
  });
  for (int64_t at = chunks * chunk; at < total; ++at) {
    const int64_t ch = at % c;
    out[at] = (a[at] - m[ch]) * u[ch] + (b != nullptr ? b[at] * w[ch] : 0.0f) + v[ch];
  }
}

}  // namespace

extern "C" {

// Training-mode BatchNorm of x (p pixels of c channels): y, and the batch's mean and
// 1 / sqrt(biased variance + eps) (c floats each); the running mean and variance (unbiased)
// move `factor` of the way to the batch's. The sums are shifted by x's first pixel, so a mean
// far from zero costs no precision. Returns 0.
int nasnet_batch_norm_forward_f32(const float* x, const float* weight, const float* bias,
                                  double eps, int64_t p, int64_t c, float* y, float* mean,
                                  float* invstd, float* running_mean, float* running_var,
                                  double factor, int64_t threads) {
  std::vector<double> sums(2 * c);
  channel_sums(x, x, p, c, x, x, sums.data(), threads);
  std::vector<float> scale(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double d = sums[ch] / p;
    const double v = std::max(0.0, sums[c + ch] / p - d * d);
    const double inv = 1.0 / std::sqrt(v + eps);
    mean[ch] = static_cast<float>(x[ch] + d);
    invstd[ch] = static_cast<float>(inv);
    running_mean[ch] = static_cast<float>((1 - factor) * running_mean[ch] + factor * mean[ch]);
    running_var[ch] = static_cast<float>((1 - factor) * running_var[ch] +
                                         factor * v * static_cast<double>(p) / (p - 1));
    scale[ch] = static_cast<float>(weight[ch] * inv);
  }
  channel_affine(x, nullptr, y, p, c, mean, scale.data(), bias, nullptr, threads);
  return 0;
}

// The gradients of that BatchNorm given g, its output's: grad_x (p x c), grad_weight and
// grad_bias (c each), from x and the forward's mean and invstd. Returns 0.
int nasnet_batch_norm_backward_f32(const float* g, const float* x, const float* weight,
                                   const float* mean, const float* invstd, int64_t p, int64_t c,
                                   float* grad_x, float* grad_weight, float* grad_bias,
                                   int64_t threads) {
  std::vector<double> sums(2 * c);  // sum of g, and of g * (x - mean)
  std::vector<float> zero(c, 0.0f);
  channel_sums(g, x, p, c, zero.data(), mean, sums.data(), threads);
  std::vector<float> k_centred(c), k_const(c), scale(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double inv = invstd[ch];
    const double sc = weight[ch] * inv;
    k_centred[ch] = static_cast<float>(-sc * inv * inv * sums[c + ch] / p);
    k_const[ch] = static_cast<float>(-sc * sums[ch] / p);
    scale[ch] = static_cast<float>(sc);
    grad_weight[ch] = static_cast<float>(sums[c + ch] * inv);
    grad_bias[ch] = static_cast<float>(sums[ch]);
  }
  channel_affine(x, g, grad_x, p, c, mean, k_centred.data(), k_const.data(), scale.data(),
                 threads);
  return 0;
}

}  // extern "C"
