// Quantized inference of an MLP: hidden layers on the int8 GEMM (gemm/int8.h), the last layer
// in float32 (the caller applies softmax/sigmoid in float32).
//
// Legend as network.h: L layers, sizes n_0 … n_L, B batch rows. Hidden layer l < L−1, row i:
//   x_q[i] = quantize(in_l[i]; s_i, z_i)                                   (uint8)
//   out_l[i,j] = act( s_i s_w[j] (Σ_p x_q[i,p] W_q[j,p] − z_i Σ_p W_q[j,p]) + b_l[j] )  (float32)
// with the int32 sum, dequantization, bias and ReLU in the kernel's epilogue (tanh / logistic
// in a pass after it). Dynamic: s_i, z_i from row i's own min and max (per sample, so that a
// row's prediction does not depend on the rest of its batch; the first layer's range and
// quantization fused row by row, X read from memory once; a hidden layer's ranges found by the
// epilogue of the layer before where it writes its output as is: ReLU, identity). Static: one
// s_x, z for every row, fixed from a calibration sample (values outside its range are
// clamped). A dynamic row whose hidden activation overflowed to ±inf gets NaN logits.
// The last layer: logits = out_{L-2} W_{L-1}ᵀ + b_{L-1} in float32; with ≤ 32 outputs (and its
// input's rows contiguous, as a hidden layer's output is) each logit one chain over the inputs
// in order, then + b, at any batch (a row's logits have the same bits alone or in a batch);
// else on the float32 GEMM.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "common.h"
#include "dense.h"
#include "gemm/int8.h"

namespace fastmlp {

struct QuantizedLayer {
  PackedInt8Weights weights;         // W_q (n_{l+1}, n_l) packed
  std::vector<float> weight_scale;   // s_w (n_{l+1})
  std::vector<float> bias;           // (n_{l+1})
  std::optional<QuantParams> input;  // static: the calibrated s_x, z; dynamic: none
};

class QuantizedNetwork {
 public:
  // hidden: layers 0 … L−2; last_W (n_L, n_{L−1}) and last_b (n_L) copied.
  QuantizedNetwork(std::vector<QuantizedLayer> hidden, const float* last_W, const float* last_b,
                   std::vector<index_t> sizes, Activation activation);

  // logits (B, n_L) of X (B, n_0), element (i,p) at X.data[i*rs + p*cs]. With finite_input,
  // X (C-contiguous) is checked finite (by the first layer's range pass where its scale is
  // dynamic, by its quantization where static: no pass of its own); returns false, writing
  // nothing, if it is not.
  bool forward(float* logits, StridedMatrix<float> X, index_t B,
               bool finite_input = false) const;

  const std::vector<index_t>& sizes() const { return sizes_; }
  // Bytes of the packed int8 weights (with their padding), weight sums and scales, and the float32
  // last layer (with its transposed copy in blocks of 16 or 32 outputs).
  std::size_t nbytes() const;

 private:
  std::vector<QuantizedLayer> hidden_;
  std::vector<float> last_W_, last_b_;
  // last_Wᵀ in blocks of 32 outputs, the last one 16 wide where at most 16 are left, each
  // (n_{L−1}, width) with zero columns past n_L, block [j, j + width) at j · n_{L−1}: the last
  // layer's kernels (narrow_dense_*) read a block each. last_W_ itself serves an input X
  // that is not contiguous (a net without hidden layers).
  std::vector<float> last_WT_;
  index_t last_block_width(index_t j0) const;  // of the block of outputs from j0
  std::vector<index_t> sizes_;
  Activation activation_;
};

}  // namespace fastmlp
