// 1x1 convolutions of channels_last (pixels, channels) float32 maps with few channels: y =
// x W^T, which with W^T in W's place is also the input gradient.
//
// oneDNN (torch 2.13) pays a per-call cost that dominates on NASNet children's small maps
// (2x2-8x8, 20-80 channels), and on larger maps leaves lanes idle where the channel count is
// not a multiple of its 16-channel block (12, 20, 24). Here a tile of pixels is multiplied
// into up to eight 16-channel vectors of outputs held in registers, one broadcast input
// channel at a time.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vectors.h"

namespace {

// Pixels [p0, p1) of y (p x m) from x (p x k) and wt (k rows of MB vectors: W^T, zero past m).
// A pixel's last vector may spill past its m channels into the next pixels', which are stored
// after it; vectors that would spill past the range are stored lane by lane.
template <int MB>
void multiply(const float* x, const v16* wt, float* y, int64_t p0, int64_t p1, int64_t k,
              int64_t m) {
  constexpr int T = MB <= 4 ? 4 : 2;  // pixels per tile
  const float* y_end = y + p1 * m;  // past the range's last pixel
  for (int64_t p = p0; p < p1; p += T) {
    const int tile = static_cast<int>(std::min<int64_t>(T, p1 - p));
    v16 acc[T][MB];
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < MB; ++b) acc[t][b] = v16{};
    const float* xp = x + p * k;
    if (tile == T) {
      for (int64_t c = 0; c < k; ++c) {
        const v16* w = wt + c * MB;
        for (int t = 0; t < T; ++t) {
          const float xv = xp[t * k + c];
          for (int b = 0; b < MB; ++b) acc[t][b] += xv * w[b];
        }
      }
    } else {
      for (int64_t c = 0; c < k; ++c)
        for (int t = 0; t < tile; ++t)
          for (int b = 0; b < MB; ++b) acc[t][b] += xp[t * k + c] * wt[c * MB + b];
    }
    for (int t = 0; t < tile; ++t) {
      float* yp = y + (p + t) * m;
      for (int b = 0; b < MB; ++b) {
        if (yp + 16 * (b + 1) <= y_end) {  // whole, spilling into pixels stored after it
          std::memcpy(yp + 16 * b, &acc[t][b], sizeof(v16));
        } else {
          for (int64_t c = 16 * b; c < m; ++c) yp[c] = acc[t][b][c - 16 * b];
        }
      }
    }
  }
}

typedef void (*Multiply)(const float*, const v16*, float*, int64_t, int64_t, int64_t, int64_t);

Multiply multiply_for(int64_t blocks) {
  switch (blocks) {
    case 1: return multiply<1>;
    case 2: return multiply<2>;
    case 3: return multiply<3>;
    case 4: return multiply<4>;
    case 5: return multiply<5>;
    case 6: return multiply<6>;
    case 7: return multiply<7>;
    case 8: return multiply<8>;
    default: return nullptr;
  }
}

}  // namespace

extern "C" {

// y (p x m) = x (p x k) w^T for w (m x k), or x w for w (k x m) where `transposed`; pixels
// split over `threads`. Returns 0, or 1 where m > 128 (y untouched).
int nasnet_pointwise_f32(const float* x, const float* w, float* y, int64_t p, int64_t k,
                         int64_t m, int64_t transposed, int64_t threads) {
  const int64_t blocks = (m + 15) / 16;
  const Multiply fn = multiply_for(blocks);
  if (fn == nullptr) return 1;
  std::vector<v16> wt(k * blocks, v16{});
  for (int64_t c = 0; c < k; ++c)
    for (int64_t o = 0; o < m; ++o)
      wt[c * blocks + o / 16][o % 16] = transposed ? w[c * m + o] : w[o * k + c];
  const int64_t parts = std::max<int64_t>(1, std::min(threads, p / 64));
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
#endif
  for (int64_t t = 0; t < parts; ++t) fn(x, wt.data(), y, p * t / parts, p * (t + 1) / parts, k, m);
  return 0;
}

}  // extern "C"
