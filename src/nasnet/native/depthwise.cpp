// Depthwise convolutions of channels_last (NHWC) float32 maps: the output (which, with the
// kernel rotated half a turn, is also the input gradient at stride 1) and the weight gradient.
//
// oneDNN (torch 2.13) runs these 1.3x-6x slower than the loops below on the maps of NASNet
// children: channel counts that are not a multiple of its 16-channel block (12, 20, 24, 36),
// kernels wider than 3 columns (the weight gradient), and per-call costs on small maps. Here
// each kernel row meets a whole row of pixels at a time: the pixels of the row one vector of
// channels at a time (16 lanes where the build has AVX-512, else 8), a window of input pixels
// held in registers sliding along it, the batch split over the OpenMP threads torch uses.
// Reads of the last channel block may run past the channels of a pixel into the next one;
// those lanes are discarded (or multiplied by zero weights), and rows whose reads would run
// past the end of the tensor take a lane-by-lane loop or a padded copy instead.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "vectors.h"

namespace {

#ifdef __AVX512F__
typedef v16 vec;  // one register
constexpr int64_t kLanes = 16;
#else
typedef v8 vec;  // one AVX2 register; two SSE / NEON ones
constexpr int64_t kLanes = 8;
#endif

// a (the first `lanes` of which are kept) += the products of `count` pixels' channel blocks.
template <typename V>
inline void dot(V& a, const float* gp, const float* xp, int64_t count, int64_t g_step,
                int64_t x_step, int64_t lanes, bool whole) {
  if (whole) {  // four sums, so that each add waits on the one four products back
    V b{}, c{}, d{};
    int64_t k = 0;
    for (; k + 4 <= count; k += 4, gp += 4 * g_step, xp += 4 * x_step) {
      a += load<V>(gp) * load<V>(xp);
      b += load<V>(gp + g_step) * load<V>(xp + x_step);
      c += load<V>(gp + 2 * g_step) * load<V>(xp + 2 * x_step);
      d += load<V>(gp + 3 * g_step) * load<V>(xp + 3 * x_step);
    }
    for (; k < count; ++k, gp += g_step, xp += x_step) a += load<V>(gp) * load<V>(xp);
    a += (b + c) + d;
  } else {
    for (int64_t k = 0; k < count; ++k, gp += g_step, xp += x_step)
      for (int64_t l = 0; l < lanes; ++l) a[l] += gp[l] * xp[l];
  }
}

struct Geometry {
  int64_t n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl;
};

// One kernel row's taps j < KW over a whole output row: each output pixel's gradient is
// loaded once and meets a window of input pixels held in registers (zero outside the map),
// which slides SW pixels per output column. Two output columns at a time, with a set of
// sums each, so that each add waits on the one 2 * KW products back.
template <int KW, int SW>
void row(vec* acc, int64_t acc_step, const float* gp, const float* x_row, int64_t ow,
         int64_t w, int64_t pl, int64_t c) {
  constexpr int kWindow = KW + SW;  // the inputs two neighbouring output columns read
  auto input = [&](int64_t col) {
    return col >= 0 && col < w ? load<vec>(x_row + col * c) : vec{};
  };
  vec a[KW], b[KW], win[kWindow];
  for (int j = 0; j < KW; ++j) a[j] = acc[j * acc_step], b[j] = vec{};
  int64_t k = 0, col = -pl;  // col: the input column of tap 0 at output column k
  if (ow >= 2) {
    for (int j = 0; j < kWindow; ++j) win[j] = input(col + j);
    for (;;) {
      const vec g0 = load<vec>(gp), g1 = load<vec>(gp + c);
      for (int j = 0; j < KW; ++j) {
        a[j] += g0 * win[j];
        b[j] += g1 * win[j + SW];
      }
      k += 2;
      gp += 2 * c;
      col += 2 * SW;
      if (k + 2 > ow) break;
      for (int j = 0; j + 2 * SW < kWindow; ++j) win[j] = win[j + 2 * SW];
      for (int j = kWindow > 2 * SW ? kWindow - 2 * SW : 0; j < kWindow; ++j)
        win[j] = input(col + j);
    }
  }
  if (k < ow) {  // an odd last column
    const vec g0 = load<vec>(gp);
    for (int j = 0; j < KW; ++j) a[j] += g0 * input(col + j);
  }
  for (int j = 0; j < KW; ++j) acc[j * acc_step] = a[j] + b[j];
}

typedef void (*Row)(vec*, int64_t, const float*, const float*, int64_t, int64_t, int64_t,
                    int64_t);

Row row_for(int64_t kw, int64_t sw) {
  if (sw == 1) return kw == 3 ? row<3, 1> : kw == 5 ? row<5, 1> : kw == 7 ? row<7, 1> : nullptr;
  if (sw == 2) return kw == 3 ? row<3, 2> : kw == 5 ? row<5, 2> : kw == 7 ? row<7, 2> : nullptr;
  return nullptr;
}

// Sums the products of images [n0, n1) into acc: kh * kw * blocks vectors.
void accumulate(const float* x, const float* g, const Geometry& s, int64_t n0, int64_t n1,
                vec* acc) {
  const int64_t blocks = (s.c + kLanes - 1) / kLanes;
  const float* x_end = x + s.n * s.h * s.w * s.c;
  const float* g_end = g + s.n * s.oh * s.ow * s.c;
  std::vector<int64_t> lo(s.kw), hi(s.kw);  // output columns whose input column j is inside
  for (int64_t j = 0; j < s.kw; ++j) {
    lo[j] = s.pl > j ? (s.pl - j + s.sw - 1) / s.sw : 0;
    const int64_t last = s.w - 1 - j + s.pl;
    hi[j] = last < 0 ? 0 : std::min(s.ow, last / s.sw + 1);
  }
  const Row fast = row_for(s.kw, s.sw);
  const int64_t x_step = s.sw * s.c;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t oh = 0; oh < s.oh; ++oh) {
      const float* g_row = g + (n * s.oh + oh) * s.ow * s.c;
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t ih = oh * s.sh + i - s.pt;
        if (ih < 0 || ih >= s.h) continue;
        const float* x_row = x + (n * s.h + ih) * s.w * s.c;
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t c0 = b * kLanes;
          const int64_t lanes = std::min(kLanes, s.c - c0);
          const int64_t width = lanes <= 8 ? 8 : kLanes;  // a last block of <= 8 channels
          vec* a_row = acc + i * s.kw * blocks + b;
          // Whether reads of `span` lanes of this row's pixels stay inside the tensors.
          auto inside = [&](int64_t span) {
            return c0 + span <= s.c || (g_row + (s.ow - 1) * s.c + c0 + span <= g_end &&
                                        x_row + (s.w - 1) * s.c + c0 + span <= x_end);
          };
          const bool whole = inside(width);
          if (fast != nullptr && inside(kLanes)) {  // a narrow last block too: lanes spare
            fast(a_row, blocks, g_row + c0, x_row + c0, s.ow, s.w, s.pl, s.c);
            continue;
          }
          for (int64_t j = 0; j < s.kw; ++j) {
            if (lo[j] >= hi[j]) continue;
            const float* gp = g_row + lo[j] * s.c + c0;
            const float* xp = x_row + (lo[j] * s.sw + j - s.pl) * s.c + c0;
            vec& a = a_row[j * blocks];
            if (width == 8) {
              v8 half = load<v8>(reinterpret_cast<const float*>(&a));
              dot(half, gp, xp, hi[j] - lo[j], s.c, x_step, lanes, whole);
              std::memcpy(&a, &half, sizeof half);
            } else {
              dot(a, gp, xp, hi[j] - lo[j], s.c, x_step, lanes, whole);
            }
          }
        }
      }
    }
  }
}

// Adds one kernel row's taps j < KW to a whole output row (one channel block): a window of
// input pixels held in registers (zero outside the map) slides SW pixels per output column.
template <int KW, int SW>
void conv_row(vec* out, int64_t out_step, const float* x_row, int64_t pitch, const vec* wv,
              int64_t w_step, int64_t ow, int64_t w, int64_t pl) {
  auto input = [&](int64_t col) {
    return col >= 0 && col < w ? load<vec>(x_row + col * pitch) : vec{};
  };
  vec wk[KW], win[KW];
  for (int j = 0; j < KW; ++j) wk[j] = wv[j * w_step];
  int64_t col = -pl;  // the input column of tap 0 at output column k
  for (int j = 0; j < KW; ++j) win[j] = input(col + j);
  for (int64_t k = 0;;) {
    vec acc = out[k * out_step];
    for (int j = 0; j < KW; ++j) acc += win[j] * wk[j];
    out[k * out_step] = acc;
    if (++k == ow) break;
    col += SW;
    for (int j = 0; j + SW < KW; ++j) win[j] = win[j + SW];
    for (int j = KW > SW ? KW - SW : 0; j < KW; ++j) win[j] = input(col + j);
  }
}

typedef void (*ConvRow)(vec*, int64_t, const float*, int64_t, const vec*, int64_t, int64_t,
                        int64_t, int64_t);

ConvRow conv_row_for(int64_t kw, int64_t sw) {
  if (sw == 1)
    return kw == 3 ? conv_row<3, 1> : kw == 5 ? conv_row<5, 1> : kw == 7 ? conv_row<7, 1> : nullptr;
  if (sw == 2)
    return kw == 3 ? conv_row<3, 2> : kw == 5 ? conv_row<5, 2> : kw == 7 ? conv_row<7, 2> : nullptr;
  return nullptr;
}

// Output rows of images [n0, n1): each summed in a row of whole channel blocks (lanes past
// the channels are zero in the weights), then copied out.
void convolve(const float* x, const vec* weights, float* y, const Geometry& s, ConvRow fn,
              int64_t n0, int64_t n1) {
  const int64_t blocks = (s.c + kLanes - 1) / kLanes;
  const float* x_end = x + s.n * s.h * s.w * s.c;
  std::vector<vec> out(s.ow * blocks), padded;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t oh = 0; oh < s.oh; ++oh) {
      std::fill(out.begin(), out.end(), vec{});
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t ih = oh * s.sh + i - s.pt;
        if (ih < 0 || ih >= s.h) continue;
        const float* x_row = x + (n * s.h + ih) * s.w * s.c;
        int64_t pitch = s.c;
        if (x_row + (s.w - 1) * s.c + blocks * kLanes > x_end) {  // the tensor's last row
          padded.assign(s.w * blocks, vec{});
          for (int64_t col = 0; col < s.w; ++col)
            std::memcpy(&padded[col * blocks], x_row + col * s.c, s.c * sizeof(float));
          x_row = reinterpret_cast<const float*>(padded.data());
          pitch = blocks * kLanes;
        }
        for (int64_t b = 0; b < blocks; ++b)
          fn(out.data() + b, blocks, x_row + b * kLanes, pitch, weights + i * s.kw * blocks + b,
             blocks, s.ow, s.w, s.pl);
      }
      float* y_row = y + (n * s.oh + oh) * s.ow * s.c;
      for (int64_t col = 0; col < s.ow; ++col)
        std::memcpy(y_row + col * s.c, &out[col * blocks], s.c * sizeof(float));
    }
  }
}

}  // namespace

extern "C" {

// out (kh, kw, c) = the gradient of the weight (c, 1, kh, kw) of a depthwise convolution of x
// (n, h, w, c) with top/left padding pt/pl (zero rows/columns past the map's other edges are
// implied by oh/ow), given g (n, oh, ow, c), the gradient of its output. The batch is split
// into `threads` contiguous parts, each summed on its own thread; the parts are then added in
// order, so the result depends on the thread count but not on timing. Returns 0.
int nasnet_depthwise_weight_grad_f32(const float* x, const float* g, float* out, int64_t n,
                                     int64_t c, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                     int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                                     int64_t pl, int64_t threads) {
  const Geometry s{n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl};
  const int64_t parts = std::max<int64_t>(1, std::min(threads, n));
  const int64_t blocks = (c + kLanes - 1) / kLanes;
  const int64_t size = kh * kw * blocks;
  std::vector<vec> partial(parts * size, vec{});
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
#endif
  for (int64_t t = 0; t < parts; ++t)
    accumulate(x, g, s, n * t / parts, n * (t + 1) / parts, partial.data() + t * size);
  for (int64_t tap = 0; tap < kh * kw; ++tap)
    for (int64_t ch = 0; ch < c; ++ch) {
      float sum = 0.0f;
      for (int64_t t = 0; t < parts; ++t)
        sum += partial[t * size + tap * blocks + ch / kLanes][ch % kLanes];
      out[tap * c + ch] = sum;
    }
  return 0;
}

// y (n, oh, ow, c) = the depthwise convolution of x (n, h, w, c) with weight (c, 1, kh, kw),
// rotated half a turn where `flip` (which makes it the input gradient of a stride-1
// convolution: x the output gradient, padding k - 1 - the convolution's), with top/left
// padding pt/pl (bottom/right implied by oh/ow). Images are split over `threads`. Returns 0,
// or 1 where the kernel has no loop for kw / sw (3, 5, 7 / 1, 2): y is then untouched.
int nasnet_depthwise_conv_f32(const float* x, const float* weight, float* y, int64_t n,
                              int64_t c, int64_t h, int64_t w, int64_t oh, int64_t ow,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                              int64_t pl, int64_t flip, int64_t threads) {
  const ConvRow fn = conv_row_for(kw, sw);
  if (fn == nullptr) return 1;
  const Geometry s{n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl};
  const int64_t blocks = (c + kLanes - 1) / kLanes;
  std::vector<vec> weights(kh * kw * blocks, vec{});  // (i, j, block), zero past c
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t si = flip ? kh - 1 - i : i, sj = flip ? kw - 1 - j : j;
        weights[(i * kw + j) * blocks + ch / kLanes][ch % kLanes] = weight[(ch * kh + si) * kw + sj];
      }
  const int64_t parts = std::max<int64_t>(1, std::min(threads, n));
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
#endif
  for (int64_t t = 0; t < parts; ++t)
    convolve(x, weights.data(), y, s, fn, n * t / parts, n * (t + 1) / parts);
  return 0;
}

}  // extern "C"
