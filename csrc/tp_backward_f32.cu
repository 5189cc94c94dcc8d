// float instantiation of the tensor-product backward kernel (its own translation unit: parallel build).
#include "batmobile/tp_backward_kernel.cuh"

namespace batmobile {
template void launch_tp_backward<float>(const TpArgs<float>& args, cudaStream_t stream);
template int tp_backward_grid<float>(const TpArgs<float>& args);
}  // namespace batmobile
