// Limits of the compiled kernels, shared by the host code (registration.cpp) and the kernels.
#pragma once

namespace batmobile {

// Spherical harmonics are compiled for max(ls) <= SH_CUDA_MAX_L (above: more than 255 registers per
// thread in the float64 double backward); batmobile_nn/_cuda.py sends higher degrees to the reference.
constexpr int SH_CUDA_MAX_L = 6;

}  // namespace batmobile
