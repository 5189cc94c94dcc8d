// double instantiation of the tensor-product backward kernel (its own translation unit: parallel build).
#include "batmobile/tp_backward_kernel.cuh"

namespace batmobile {
template void launch_tp_backward<double>(const TpArgs<double>& args, cudaStream_t stream);
template int tp_backward_grid<double>(const TpArgs<double>& args);
}  // namespace batmobile
