// float instantiation of the tensor-product forward kernel (its own translation unit: parallel build).
#include "batmobile/tp_forward_kernel.cuh"

namespace batmobile {
template void launch_tp_forward<float>(const TpArgs<float>& args, cudaStream_t stream);
}  // namespace batmobile
