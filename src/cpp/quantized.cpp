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
  // Wᵀ in column blocks (n_in, width) of 32 outputs, the last one 16 wide where at most 16
  // are left (fewer lanes computed for nothing), zero past n_out; the block of outputs
  // [j, j + width) at j · n_in.
  const index_t last_block = n_out > 0 ? (n_out - 1) / 32 * 32 : 0;
  const index_t padded = n_out > 0 ? last_block + last_block_width(last_block) : 0;
  last_WT_.assign(static_cast<std::size_t>(padded * n_in), 0.0f);
  for (index_t j0 = 0; j0 < n_out; j0 += 32) {
    const index_t width = last_block_width(j0);
    float* block = last_WT_.data() + j0 * n_in;
    for (index_t j = j0; j < std::min(j0 + width, n_out); ++j)
      for (index_t p = 0; p < n_in; ++p) block[p * width + (j - j0)] = last_W[j * n_in + p];
  }
}

index_t QuantizedNetwork::last_block_width(index_t j0) const {
  return sizes_.back() - j0 <= 16 ? 16 : 32;
}

std::size_t QuantizedNetwork::nbytes() const {
  std::size_t total = (last_W_.size() + last_WT_.size() + last_b_.size()) * sizeof(float);
  for (const QuantizedLayer& layer : hidden_)
    total += layer.weights.nbytes() + layer.weights.row_sums.size() * 4 +
             (layer.weight_scale.size() + layer.bias.size()) * sizeof(float);
  return total;
}

namespace {

// out (B, N) row stride ldo = h (B, K) row stride ldh · WT + b, WT (K, N16) with N ≤ N16: each
// output one chain over p in order, then + b (the operations of narrow_dense_avx512, without
// its FMA: a row gets the same bits in any batch on this path too). The inner loop over the
// N16 outputs vectorises without reordering any chain.
void narrow_dense_portable(float* out, index_t ldo, const float* h, index_t ldh, index_t B,
                           index_t K, const float* WT, index_t N16, const float* b, index_t N) {
  for (index_t i = 0; i < B; ++i) {
    float acc[32] = {};
    const float* row = h + i * ldh;
    for (index_t p = 0; p < K; ++p) {
      const float x = row[p];
      const float* w = WT + p * N16;
      for (index_t o = 0; o < N16; ++o) acc[o] += x * w[o];
    }
    for (index_t o = 0; o < N; ++o) out[i * ldo + o] = acc[o] + b[o];
  }
}

}  // namespace

bool QuantizedNetwork::forward(float* logits, StridedMatrix<float> X, index_t B,
                               bool finite_input) const {
  // With hidden layers, the first layer's range pass (dynamic) or quantization (static) sees
  // every input: no pass of its own.
  if (finite_input && hidden_.empty() && first_nonfinite(X.data, B * sizes_.front()) >= 0)
    return false;
  // Per-thread buffers, reused between calls: the quantized input of a layer (B rows of K4
  // bytes), the hidden activations ping-pong (B × widest hidden), each row's input scale and
  // zero point, the rows' ranges found by an epilogue, the rows whose activations overflowed.
  static thread_local std::vector<std::uint8_t> quantized;
  static thread_local AlignedBuffer<float> ping_pong;
  static thread_local std::vector<float> input_scale, ranges;
  static thread_local std::vector<std::int32_t> input_zero;
  static thread_local std::vector<std::uint8_t> overflowed;
  const index_t L = static_cast<index_t>(sizes_.size()) - 1;
  index_t widest = 1, widest_k4 = 4;
  for (const QuantizedLayer& layer : hidden_) {
    widest = std::max(widest, layer.weights.N);
    widest_k4 = std::max(widest_k4, layer.weights.K4);
  }
  float* buffers = ping_pong.reserve(static_cast<std::size_t>(2 * B * widest));
  quantized.resize(static_cast<std::size_t>(B * widest_k4));
  const std::size_t rows = static_cast<std::size_t>(B);
  input_scale.resize(rows);
  input_zero.resize(rows);
  ranges.resize(2 * rows);
  bool any_overflow = false;

  StridedMatrix<float> in = X;
  // Whether the layer before found the rows' ranges of this layer's input in its epilogue
  // (dynamic scales, ReLU or identity: its output is the next input as written).
  bool range_found = false;
  for (index_t l = 0; l < L - 1; ++l) {
    const QuantizedLayer& layer = hidden_[static_cast<std::size_t>(l)];
    const index_t K = layer.weights.K, N = layer.weights.N, K4 = layer.weights.K4;
    if (layer.input) {
      // X's finiteness is checked here for a static first layer (no range pass).
      const bool check = finite_input && l == 0;
      if (!quantize_rows(quantized.data(), K4, in.data, in.row_stride, in.col_stride, B, K,
                         *layer.input, check))
        return false;
      std::fill(input_scale.begin(), input_scale.end(), layer.input->scale);
      std::fill(input_zero.begin(), input_zero.end(), layer.input->zero);
    } else {
      if (!any_overflow) overflowed.assign(rows, 0);
      // A row that is not finite: in X, an error where asked (finite_input); in a hidden layer,
      // a float32 overflow, which no scale holds (the float32 model's logits are not finite
      // either): that row's logits are NaN, not clamped values.
      if (quantize_rows_dynamic(quantized.data(), K4, in.data, in.row_stride, in.col_stride, B,
                                K, range_found ? ranges.data() : nullptr, input_scale.data(),
                                input_zero.data(), overflowed.data())) {
        if (finite_input && l == 0) return false;
        any_overflow = true;
      }
    }
    Int8Epilogue ep;
    ep.weight_sums = layer.weights.row_sums.data();
    ep.weight_scale = layer.weight_scale.data();
    ep.bias = layer.bias.data();
    ep.input_zero = input_zero.data();
    ep.input_scale = input_scale.data();
    ep.relu = activation_ == Activation::relu;
    float* out = buffers + (l % 2) * B * widest;
    const bool next_dynamic = l + 1 < L - 1 && !hidden_[static_cast<std::size_t>(l + 1)].input;
    range_found = next_dynamic &&
                  (activation_ == Activation::relu || activation_ == Activation::identity);
    int8_gemm(quantized.data(), K4, B, layer.weights, out, N, ep,
              range_found ? ranges.data() : nullptr);
    if (activation_ == Activation::tanh || activation_ == Activation::logistic)
      activation_forward_inplace(out, B * N, activation_);
    in = StridedMatrix<float>{out, N, 1};
  }
  const index_t n_in = sizes_[L - 1], n_out = sizes_[L];
  if (in.col_stride == 1) {
    // Block by block of N16 outputs, each output one chain over p in order then + b
    // (narrow_dense_avx512 / narrow_dense_portable): a row's logits are the same bits in any
    // batch, for every output count.
    for (index_t j = 0; j < n_out; j += 32) {
      const index_t width = last_block_width(j), n = std::min(width, n_out - j);
      const float* WT = last_WT_.data() + j * n_in;
      bool done = false;
#ifdef FASTMLP_X86
      done = active_int8_path() == Int8Path::avx512vnni &&
             narrow_dense_avx512(logits + j, n_out, in.data, in.row_stride, B, n_in, WT, width,
                                 last_b_.data() + j, n);
#endif
      if (!done)
        narrow_dense_portable(logits + j, n_out, in.data, in.row_stride, B, n_in, WT, width,
                              last_b_.data() + j, n);
    }
  } else {
    dense_forward(logits, in, StridedMatrix<float>{last_W_.data(), n_in, 1}, last_b_.data(), B,
                  n_in, n_out, Activation::identity);
  }
  if (any_overflow)
    for (index_t i = 0; i < B; ++i)
      if (overflowed[static_cast<std::size_t>(i)])
        std::fill(logits + i * n_out, logits + (i + 1) * n_out,
                  std::numeric_limits<float>::quiet_NaN());
  return true;
}

}  // namespace fastmlp
