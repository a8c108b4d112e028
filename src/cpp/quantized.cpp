// Quantized inference of an MLP (see quantized.h).
#include "quantized.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "activations.h"
#include "checks.h"

namespace fastmlp {

QuantizedNetwork::QuantizedNetwork(std::vector<QuantizedLayer> hidden, const float* last_W,
                                   const float* last_b, std::vector<index_t> sizes,
                                   Activation activation)
    : hidden_(std::move(hidden)), sizes_(std::move(sizes)), activation_(activation) {
  const index_t L = static_cast<index_t>(sizes_.size()) - 1;
  const index_t n_in = sizes_[L - 1], n_out = sizes_[L];
  last_W_.assign(last_W, last_W + n_in * n_out);
  last_b_.assign(last_b, last_b + n_out);
  if (n_out <= 32) {
    last_N16_ = n_out <= 16 ? 16 : 32;
    last_WT_.assign(static_cast<std::size_t>(n_in * last_N16_), 0.0f);
    for (index_t j = 0; j < n_out; ++j)
      for (index_t p = 0; p < n_in; ++p) last_WT_[p * last_N16_ + j] = last_W[j * n_in + p];
  }
}

std::size_t QuantizedNetwork::nbytes() const {
  std::size_t total = (last_W_.size() + last_WT_.size() + last_b_.size()) * sizeof(float);
  for (const QuantizedLayer& layer : hidden_)
    total += layer.weights.nbytes() + layer.weights.row_sums.size() * 4 +
             (layer.weight_scale.size() + layer.bias.size()) * sizeof(float);
  return total;
}

bool QuantizedNetwork::forward(float* logits, StridedMatrix<float> X, index_t B,
                               bool finite_input) const {
  // With hidden layers, the first layer's range pass (dynamic) or quantization (static) sees
  // every input: no pass of its own.
  if (finite_input && hidden_.empty() && first_nonfinite(X.data, B * sizes_.front()) >= 0)
    return false;
  // Per-thread buffers, reused between calls: the quantized input of a layer (B rows of K4
  // bytes), the hidden activations ping-pong (B × widest hidden), the epilogue's per-channel
  // arrays.
  static thread_local std::vector<std::uint8_t> quantized;
  static thread_local AlignedBuffer<float> ping_pong;
  static thread_local std::vector<float> scale;
  static thread_local std::vector<std::int32_t> correction;
  const index_t L = static_cast<index_t>(sizes_.size()) - 1;
  index_t widest = 1, widest_k4 = 4;
  for (const QuantizedLayer& layer : hidden_) {
    widest = std::max(widest, layer.weights.N);
    widest_k4 = std::max(widest_k4, layer.weights.K4);
  }
  float* buffers = ping_pong.reserve(static_cast<std::size_t>(2 * B * widest));
  quantized.resize(static_cast<std::size_t>(B * widest_k4));

  StridedMatrix<float> in = X;
  // The range of the layer's input where the layer before found it in its epilogue (dynamic
  // scales, ReLU or identity: its output is the next input as written).
  float found_range[2];
  bool range_found = false;
  for (index_t l = 0; l < L - 1; ++l) {
    const QuantizedLayer& layer = hidden_[static_cast<std::size_t>(l)];
    const index_t K = layer.weights.K, N = layer.weights.N, K4 = layer.weights.K4;
    QuantParams q;
    if (layer.input) {
      q = *layer.input;
    } else {
      float lo = found_range[0], hi = found_range[1];
      bool has_nan = false;
      if (!range_found)
        tensor_range(in.data, in.row_stride, in.col_stride, B, K, &lo, &hi, &has_nan);
      if (finite_input && l == 0 && (has_nan || !std::isfinite(lo) || !std::isfinite(hi)))
        return false;
      if (!std::isfinite(lo) || !std::isfinite(hi)) {
        // A hidden activation overflowed float32 (the inputs are finite): no scale holds it,
        // and the float32 model's logits are not finite either. NaN, not clamped values.
        std::fill(logits, logits + B * sizes_[L], std::numeric_limits<float>::quiet_NaN());
        return true;
      }
      q = quant_params(lo, hi);
    }
    // X's finiteness, where no range pass has checked it (a static first layer).
    const bool check = finite_input && l == 0 && layer.input;
    if (!quantize_rows(quantized.data(), K4, in.data, in.row_stride, in.col_stride, B, K, q,
                       check))
      return false;
    scale.resize(static_cast<std::size_t>(N));
    correction.resize(static_cast<std::size_t>(N));
    for (index_t j = 0; j < N; ++j) {
      scale[j] = q.scale * layer.weight_scale[j];
      correction[j] = q.zero * layer.weights.row_sums[j];
    }
    Int8Epilogue ep;
    ep.zero_correction = correction.data();
    ep.scale = scale.data();
    ep.bias = layer.bias.data();
    ep.relu = activation_ == Activation::relu;
    float* out = buffers + (l % 2) * B * widest;
    const bool next_dynamic = l + 1 < L - 1 && !hidden_[static_cast<std::size_t>(l + 1)].input;
    range_found = next_dynamic &&
                  (activation_ == Activation::relu || activation_ == Activation::identity);
    int8_gemm(quantized.data(), K4, B, layer.weights, out, N, ep,
              range_found ? found_range : nullptr);
    if (activation_ == Activation::tanh || activation_ == Activation::logistic)
      activation_forward_inplace(out, B * N, activation_);
    in = StridedMatrix<float>{out, N, 1};
  }
#ifdef FASTMLP_X86
  if (!last_WT_.empty() && in.col_stride == 1 && active_int8_path() == Int8Path::avx512vnni &&
      narrow_dense_avx512(logits, sizes_[L], in.data, in.row_stride, B, sizes_[L - 1],
                          last_WT_.data(), last_b_.data(), sizes_[L]))
    return true;
#endif
  dense_forward(logits, in, StridedMatrix<float>{last_W_.data(), sizes_[L - 1], 1},
                last_b_.data(), B, sizes_[L - 1], sizes_[L], Activation::identity);
  return true;
}

}  // namespace fastmlp
