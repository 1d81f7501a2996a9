// GCC vector types shared by the kernels: 16 and 8 floats (one AVX-512 / AVX2 register; the
// compiler splits them over narrower registers where the build has none that wide).

#pragma once

#include <cstring>

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));

// An unaligned load of a vector of V's width from p.
template <typename V = v16>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
