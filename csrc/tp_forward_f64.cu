// double instantiation of the tensor-product forward kernel (its own translation unit: parallel build).
#include "batmobile/tp_forward_kernel.cuh"

namespace batmobile {
template void launch_tp_forward<double>(const TpArgs<double>& args, cudaStream_t stream);
}  // namespace batmobile
