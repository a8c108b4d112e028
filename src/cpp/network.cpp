// An MLP's forward and backward pass (see network.h).
#include "network.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <type_traits>

#include "activations.h"
#include "loss.h"
#include "narrow.h"
#include "threads.h"

namespace fastmlp {

namespace {
std::atomic<LayoutChoice> g_forced_layout{LayoutChoice::automatic};
}  // namespace

LayoutChoice testing_force_layout(LayoutChoice choice) { return g_forced_layout.exchange(choice); }

Layout choose_layout(const std::vector<index_t>& sizes, index_t max_batch) {
  switch (g_forced_layout.load(std::memory_order_relaxed)) {
    case LayoutChoice::rows:
      return Layout::rows;
    case LayoutChoice::features:
      return Layout::features;
    case LayoutChoice::automatic:
      break;
  }
  return use_narrow_path(sizes, max_batch) ? Layout::features : Layout::rows;
}

index_t NetworkShape::widest_hidden() const {
  index_t widest = 0;
  for (index_t l = 1; l < layers(); ++l) widest = std::max(widest, sizes[l]);
  return widest;
}

index_t NetworkShape::widest() const {
  return *std::max_element(sizes.begin() + 1, sizes.end());
}

namespace {
// The caller's thread plan for layer l's products, in force while it lives; without a plan,
// nothing (the calling thread's mode holds; inference then costs no thread-local access).
struct LayerThreads {
  std::optional<ParallelScope> scope;
  LayerThreads(const ParallelMode* plan, index_t l) {
    if (plan) scope.emplace(plan[l]);
  }
};
}  // namespace

template <class T>
template <Layout layout>
const T* Network<T>::forward(const Batch<T>& batch, const Workspace<T>& ws) const {
  const std::vector<index_t>& n = shape_.sizes;
  const index_t L = shape_.layers(), B = batch.rows;
  for (index_t l = 0; l < L; ++l) {
    const Activation act = l < L - 1 ? shape_.hidden : Activation::identity;
    if constexpr (layout == Layout::rows) {
      const LayerThreads threads(ws.layer_mode, l);
      if (l == 0 && batch.sparse) {
        if (first_layer_transposed_)
          sparse_forward_transposed(ws.act[0], *batch.sparse, B, weights_[0], biases_[0], n[1],
                                    act);
        else
          sparse_forward(ws.act[0], *batch.sparse, B, weights_[0], n[0], biases_[0], n[1], act);
        continue;
      }
      const StridedMatrix<T> in = l == 0 ? batch.x : StridedMatrix<T>{ws.act[l - 1], n[l], 1};
      dense_forward(ws.act[l], in, StridedMatrix<T>{weights_[l], n[l], 1}, biases_[l], B, n[l],
                    n[l + 1], act, packed_ ? packed_[l] : nullptr, packed_nr_);
    } else {
      narrow_forward(ws.act[l], l == 0 ? batch.x.data : ws.act[l - 1], weights_[l], biases_[l],
                     B, n[l], n[l + 1], act);
    }
  }
  return ws.act[L - 1];
}

template <class T>
template <Layout layout>
double Network<T>::loss(const Batch<T>& batch, const Workspace<T>& ws) const {
  const index_t B = batch.rows, K = shape_.sizes.back();
  const T* logits = ws.act[shape_.layers() - 1];
  T* dlogits = ws.grad[0];
  if constexpr (layout == Layout::features) {  // the losses read and write (B, K)
    transpose_into(ws.logits_rows, logits, K, B, B);
    logits = ws.logits_rows;
    dlogits = ws.grad[1];
  }
  double value = 0.0;
  switch (shape_.output) {
    case OutputKind::softmax:
      value = softmax_nll(dlogits, logits, batch.labels, batch.weights, B, K);
      break;
    case OutputKind::sigmoid:
      value = sigmoid_bce(dlogits, logits, batch.labels, batch.weights, B);
      break;
    case OutputKind::identity:
      value = squared_error(dlogits, logits, batch.targets, batch.weights, B, K);
      break;
    case OutputKind::sigmoid_multi:
      value = sigmoid_bce_multi(dlogits, logits, batch.targets, batch.weights, B, K);
      break;
    case OutputKind::poisson:
      value = poisson_deviance(dlogits, logits, batch.targets, batch.weights, B, K);
      break;
  }
  if constexpr (layout == Layout::features)
    if (std::isfinite(value)) transpose_into(ws.grad[0], dlogits, B, K, K);
  return value;
}

template <class T>
template <Layout layout>
void Network<T>::backward(const Batch<T>& batch, const Workspace<T>& ws,
                          const GradientSink<T>& sink) const {
  const std::vector<index_t>& n = shape_.sizes;
  const index_t L = shape_.layers(), B = batch.rows;
  const Activation hidden = shape_.hidden;
  // grad_out = dL/da_l. For a hidden layer the activation's derivative was applied by the
  // layer above (for ReLU in its input-gradient product's write-back: the mask epilogue).
  T* grad_out = ws.grad[0];
  for (index_t l = L - 1; l >= 0; --l) {
    const index_t n_in = n[l], n_out = n[l + 1];
    T* grad_in = l > 0 ? ws.grad[(L - l) % 2] : nullptr;
    if constexpr (layout == Layout::rows) {
      const LayerThreads threads(ws.layer_mode, l);
      const StridedMatrix<T> in = l == 0 ? batch.x : StridedMatrix<T>{ws.act[l - 1], n_in, 1};
      bias_gradient(sink.grad_b[l], grad_out, B, n_out);  // while grad_out is hot in cache
      if (grad_in) {
        // The product that reads W_l runs before W_l's gradient goes to the sink, which may
        // update W_l.
        input_gradient(grad_in, grad_out, StridedMatrix<T>{weights_[l], n_in, 1}, B, n_in, n_out,
                       hidden == Activation::relu ? ws.act[l - 1] : nullptr);
        if (hidden == Activation::tanh || hidden == Activation::logistic)
          activation_backward_inplace(grad_in, ws.act[l - 1], B * n_in, hidden);
      }
      if (l == 0 && batch.sparse) {
        if (sink.sparse_consumer)
          sink.sparse_consumer(sink.context, *batch.sparse, B, grad_out);
        else
          sparse_weight_gradient(sink.grad_W[0], grad_out, *batch.sparse, B, n_in, n_out);
      } else if (sink.consumer_for_layer) {
        const TileConsumer<T> consumer = sink.consumer_for_layer(sink.context, l);
        weight_gradient(static_cast<T*>(nullptr), grad_out, in, B, n_in, n_out, &consumer);
      } else {
        weight_gradient(sink.grad_W[l], grad_out, in, B, n_in, n_out);
      }
    } else {
      const T* in = l == 0 ? batch.x.data : ws.act[l - 1];
      narrow_parameter_gradients(sink.grad_W[l], sink.grad_b[l], grad_out, in, B, n_in, n_out);
      if (grad_in) {
        narrow_input_gradient(grad_in, grad_out, weights_[l], B, n_in, n_out);
        activation_backward_inplace(grad_in, ws.act[l - 1], B * n_in, hidden);
      }
    }
    grad_out = grad_in;
  }
}

namespace {
index_t rounded(index_t n) { return (n + 15) / 16 * 16; }  // 16 elements: ≥ 64 bytes
}  // namespace

template <class T>
index_t Network<T>::workspace_elements(const NetworkShape& shape, index_t max_batch,
                                       Layout layout) {
  index_t total = 2 * rounded(max_batch * shape.widest());
  for (index_t l = 0; l < shape.layers(); ++l) total += rounded(max_batch * shape.sizes[l + 1]);
  if (layout == Layout::features) total += rounded(max_batch * shape.sizes.back());
  return total;
}

template <class T>
Workspace<T> Network<T>::carve_workspace(T* block, const NetworkShape& shape, index_t max_batch,
                                         Layout layout) {
  Workspace<T> ws;
  auto carve = [&](index_t n) {
    T* piece = block;
    block += rounded(n);
    return piece;
  };
  ws.grad[0] = carve(max_batch * shape.widest());
  ws.grad[1] = carve(max_batch * shape.widest());
  for (index_t l = 0; l < shape.layers(); ++l)
    ws.act.push_back(carve(max_batch * shape.sizes[l + 1]));
  if (layout == Layout::features) ws.logits_rows = carve(max_batch * shape.sizes.back());
  return ws;
}

template <class T>
void add_l2_gradient(T* grad, index_t ld_grad, const T* W, index_t ld, index_t rows,
                     index_t cols, T scale) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < cols; ++j) grad[r * ld_grad + j] += scale * W[r * ld + j];
}

template <class T>
double sum_of_squares(const T* w, index_t ld, index_t rows, index_t cols) {
  double partial[8] = {};
  double total = 0.0;
  for (index_t r = 0; r < rows; ++r) {
    const T* row = w + r * ld;
    index_t i = 0;
    for (; i + 8 <= cols; i += 8)
      for (int j = 0; j < 8; ++j) partial[j] += static_cast<double>(row[i + j]) * row[i + j];
    for (; i < cols; ++i) total += static_cast<double>(row[i]) * row[i];
  }
  for (const double p : partial) total += p;
  return total;
}

namespace {
// Inference of one batch (dense or sparse) through all layers: the hidden activations
// ping-pong between two (B, widest hidden) buffers of the calling thread, reused between calls.
template <class T>
void forward_all(T* logits, const Batch<T>& batch, const NetworkShape& shape,
                 const T* const* weights, const T* const* biases,
                 const T* const* packed = nullptr, index_t packed_nr = 0) {
  static thread_local AlignedBuffer<T> ping_pong;
  static thread_local Workspace<T> ws;  // its act vector keeps its capacity between calls
  const index_t L = shape.layers(), widest = std::max<index_t>(shape.widest_hidden(), 1);
  const index_t B = batch.rows;
  T* buffers = ping_pong.reserve(static_cast<std::size_t>(2 * B * widest));
  ws.act.clear();
  for (index_t l = 0; l < L; ++l)
    ws.act.push_back(l == L - 1 ? logits : buffers + (l % 2) * B * widest);
  Network<T>(shape, weights, biases, false, packed, packed_nr)
      .template forward<Layout::rows>(batch, ws);
}
}  // namespace

template <class T>
PackedWeights<T>::PackedWeights(const NetworkShape& net_shape, const T* const* weights,
                                const T* const* biases_in)
    : isa(active_isa()), nr(prepack_nr<T>(isa)), shape(net_shape) {
  for (index_t l = 0; l < shape.layers(); ++l) {
    const index_t K = shape.sizes[l], N = shape.sizes[l + 1];
    const index_t count = prepacked_b_elements<T>(N, K, isa);
    buffers.push_back(std::make_unique<AlignedBuffer<T>>());
    T* panels = buffers.back()->reserve(static_cast<std::size_t>(count));
    prepack_b(panels, weights[l], K, N, K, isa);
    layers.push_back(panels);
    elements += static_cast<std::size_t>(count);
    bias_copies.emplace_back(biases_in[l], biases_in[l] + N);
  }
  for (const std::vector<T>& b : bias_copies) biases.push_back(b.data());
}

bool packed_forward_row(float* logits, const float* x, const PackedWeights<float>& packed) {
#ifdef FASTMLP_X86
  const float* const* panels = packed.for_active_isa();
  if (!panels || packed.isa != Isa::avx512) return false;
  return mlp_forward_row_avx512(logits, x, packed.shape, panels, packed.biases.data(), packed.nr);
#else
  (void)logits, (void)x, (void)packed;
  return false;
#endif
}

template <class T>
const T* const* PackedWeights<T>::for_active_isa() const {
  return active_isa() == isa ? layers.data() : nullptr;
}

template <class T>
void mlp_forward(T* logits, StridedMatrix<T> X, index_t B, const NetworkShape& shape,
                 const T* const* weights, const T* const* biases,
                 const PackedWeights<T>* packed) {
  // (The pack's own isa and nr from here on: the active ISA may change during the call.)
  const T* const* panels = packed ? packed->for_active_isa() : nullptr;
#ifdef FASTMLP_X86
  if constexpr (std::is_same_v<T, float>)
    if (B == 1 && panels && X.col_stride == 1 && packed->isa == Isa::avx512 &&
        mlp_forward_row_avx512(logits, X.data, shape, panels, biases, packed->nr))
      return;
#endif
  Batch<T> batch;
  batch.x = X;
  batch.rows = B;
  forward_all(logits, batch, shape, weights, biases, panels, panels ? packed->nr : 0);
}

template <class T>
void mlp_forward_sparse(T* logits, const SparseRows<T>& X, index_t B, const NetworkShape& shape,
                        const T* const* weights, const T* const* biases) {
  Batch<T> batch;
  batch.sparse = &X;
  batch.rows = B;
  forward_all(logits, batch, shape, weights, biases);
}

#define FASTMLP_INSTANTIATE(T)                                                                 \
  template class Network<T>;                                                                   \
  template const T* Network<T>::forward<Layout::rows>(const Batch<T>&, const Workspace<T>&)    \
      const;                                                                                   \
  template const T* Network<T>::forward<Layout::features>(const Batch<T>&,                     \
                                                          const Workspace<T>&) const;          \
  template double Network<T>::loss<Layout::rows>(const Batch<T>&, const Workspace<T>&) const;  \
  template double Network<T>::loss<Layout::features>(const Batch<T>&, const Workspace<T>&)     \
      const;                                                                                   \
  template void Network<T>::backward<Layout::rows>(const Batch<T>&, const Workspace<T>&,       \
                                                   const GradientSink<T>&) const;              \
  template void Network<T>::backward<Layout::features>(const Batch<T>&, const Workspace<T>&,   \
                                                       const GradientSink<T>&) const;          \
  template void add_l2_gradient<T>(T*, index_t, const T*, index_t, index_t, index_t, T);       \
  template double sum_of_squares<T>(const T*, index_t, index_t, index_t);                      \
  template struct PackedWeights<T>;                                                            \
  template void mlp_forward<T>(T*, StridedMatrix<T>, index_t, const NetworkShape&,             \
                               const T* const*, const T* const*, const PackedWeights<T>*);    \
  template void mlp_forward_sparse<T>(T*, const SparseRows<T>&, index_t, const NetworkShape&,  \
                                      const T* const*, const T* const*);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
