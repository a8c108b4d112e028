// An MLP's forward and backward pass, written once. The training engine (trainer.h), inference
// (mlp_forward) and loss_and_grad all run this loop.
//
// Legend: L layers, sizes n_0 … n_L (n_0 inputs, n_L logits), B batch rows. Layer l (0-based)
// maps n_l to n_{l+1}: W_l (n_{l+1}, n_l), b_l (n_{l+1}) (the torch.nn.Linear layout);
// a_l = in_l W_lᵀ + b_l; out_l = act(a_l) for hidden layers, and a_{L-1} are the logits.
//
// Two layouts of the activations, policies of the one loop:
//   Layout::rows      (B, n) row-major; products on the GEMM (dense.h), the bias and the ReLU
//                     (and, backward, the ReLU's derivative) in the products' write-back.
//   Layout::features  (n, B) feature-major, for nets whose every layer is narrow (narrow.h);
//                     only the losses read row-major logits, transposed in and out.
#pragma once

#include <cmath>
#include <memory>
#include <vector>

#include "common.h"
#include "cpu.h"
#include "dense.h"
#include "gemm/gemm.h"
#include "sparse.h"
#include "threads.h"

namespace fastmlp {

// softmax + NLL (labels), one logit + sigmoid + BCE (labels 0/1), identity + ½ squared error
// (regression targets), one sigmoid + BCE per output (multilabel targets 0/1), exp + half
// Poisson deviance (regression targets ≥ 0; the logits are log μ).
enum class OutputKind { softmax, sigmoid, identity, sigmoid_multi, poisson };

// Whether the output's y is a (rows, n_L) target matrix of T rather than int64 labels.
inline bool takes_targets(OutputKind o) {
  return o == OutputKind::identity || o == OutputKind::sigmoid_multi || o == OutputKind::poisson;
}

enum class Layout { rows, features };

// The trainer's layout: chosen from the net and the batch (use_narrow_path, narrow.h), or
// forced by a test hook so that both layouts run every net. Returns the previous choice.
enum class LayoutChoice { automatic, rows, features };
LayoutChoice testing_force_layout(LayoutChoice choice);
Layout choose_layout(const std::vector<index_t>& sizes, index_t max_batch);

struct NetworkShape {
  std::vector<index_t> sizes;  // n_0 … n_L
  Activation hidden = Activation::relu;
  OutputKind output = OutputKind::softmax;
  index_t layers() const { return static_cast<index_t>(sizes.size()) - 1; }
  index_t widest_hidden() const;  // max n_1 … n_{L-1} (0 without hidden layers)
  index_t widest() const;         // max n_1 … n_L
};

// One mini-batch. x: (rows, n_0) strided for Layout::rows; (n_0, rows) contiguous for
// Layout::features; or, when sparse is set (Layout::rows only), the rows of a CSR matrix
// (sparse.h) and x unused. labels (rows) for softmax/sigmoid outputs, targets (rows, n_L) for
// regression; weights (rows) or null.
template <class T>
struct Batch {
  StridedMatrix<T> x{nullptr, 0, 1};
  const SparseRows<T>* sparse = nullptr;
  index_t rows = 0;
  const std::int64_t* labels = nullptr;
  const T* targets = nullptr;
  const T* weights = nullptr;
};

// Where the activations and the gradients live, carved by the caller (sizes below).
//   act[l]: out_l, (B, n_{l+1}) or (n_{l+1}, B); act[L-1] the logits. Inference may let
//           act[l] and act[l+2] share memory: forward reads only the layer below.
//   grad[0], grad[1]: (B, widest) ping-pong, dL/da of the layer being differentiated.
//   logits_rows: (B, n_L), Layout::features only (the losses' row-major logits).
// layer_mode: the thread plan, per layer how its products use the pool (threads.h); null:
// the calling thread's mode. (Layout::features runs no GEMM and no thread.)
template <class T>
struct Workspace {
  std::vector<T*> act;
  T* grad[2] = {nullptr, nullptr};
  T* logits_rows = nullptr;
  const ParallelMode* layer_mode = nullptr;
};

// What backward does with each layer's weight gradient dL/dW_l (n_{l+1}, n_l): writes it to
// grad_W[l] (row stride n_l), or, on Layout::rows when consumer_for_layer is set, hands its
// finished tiles to consumer_for_layer(context, l) (gemm.h: the engine updates W_l tile by
// tile while the tile is in L1). The bias gradient always goes to grad_b[l] (n_{l+1}).
// W_l is read by backward before its weight gradient is produced, so a consumer may update it.
// With sparse input, layer 0's weight gradient is zero outside the batch's columns: it goes to
// sparse_consumer(context, x, B, grad_a_0) when set (the engine computes and applies it per
// touched column: TouchedColumns, sparse.h), else to grad_W[0], dense.
template <class T>
struct GradientSink {
  std::vector<T*> grad_W, grad_b;
  TileConsumer<T> (*consumer_for_layer)(void* context, index_t layer) = nullptr;
  void (*sparse_consumer)(void* context, const SparseRows<T>& x, index_t B,
                          const T* grad_a) = nullptr;
  void* context = nullptr;
};

template <class T>
class Network {
 public:
  // A view, owning nothing (built per call by inference): the shape and the arrays of
  // pointers to W_l (n_{l+1}, n_l) and b_l (n_{l+1}), contiguous, must outlive it.
  // first_layer_transposed: weights[0] is W_0ᵀ (n_0, n_1), the layout in which sparse
  // batches read it fastest (sparse.h); only sparse batches may then be run.
  // packed: each W_l pre-packed (PackedWeights::layers) in panels packed_nr wide, read by
  // forward only; or null.
  Network(const NetworkShape& shape, const T* const* weights, const T* const* biases,
          bool first_layer_transposed = false, const T* const* packed = nullptr,
          index_t packed_nr = 0)
      : shape_(shape), weights_(weights), biases_(biases),
        first_layer_transposed_(first_layer_transposed), packed_(packed),
        packed_nr_(packed_nr) {}

  const NetworkShape& shape() const { return shape_; }

  // act[l] = act(in_l W_lᵀ + b_l) for every layer; in_0 = batch.x. Returns the logits.
  template <Layout layout>
  const T* forward(const Batch<T>& batch, const Workspace<T>& ws) const;

  // The data loss of the batch (its (weighted) mean over rows; no L2 penalty) and its
  // gradient w.r.t. the logits, (softmax(o) − onehot(y)) · w_r / Σw etc. (loss.h), into
  // ws.grad[0], in the layout's orientation. Non-finite: returned as is, gradient unspecified.
  template <Layout layout>
  double loss(const Batch<T>& batch, const Workspace<T>& ws) const;

  // Backpropagation from dL/d logits in ws.grad[0] (after loss()), last layer first:
  //   grad_b_l = Σ_rows grad_a_l,  dL/dW_l = grad_a_lᵀ in_l  (to the sink),
  //   grad_a_{l-1} = (grad_a_l W_l) · act'(a_{l-1})   (from out_{l-1}: activations.h)
  // The input gradient of layer 0 is not computed.
  template <Layout layout>
  void backward(const Batch<T>& batch, const Workspace<T>& ws, const GradientSink<T>& sink) const;

  // forward, loss and, when the loss is finite, backward. Returns the data loss.
  template <Layout layout>
  double gradients(const Batch<T>& batch, const Workspace<T>& ws,
                   const GradientSink<T>& sink) const {
    forward<layout>(batch, ws);
    const double value = loss<layout>(batch, ws);
    if (std::isfinite(value)) backward<layout>(batch, ws, sink);
    return value;
  }

  // Elements a training Workspace needs for batches of up to max_batch rows (each piece
  // rounded to a cache line), and the carving of such a block.
  static index_t workspace_elements(const NetworkShape& shape, index_t max_batch, Layout layout);
  static Workspace<T> carve_workspace(T* block, const NetworkShape& shape, index_t max_batch,
                                      Layout layout);

 private:
  const NetworkShape& shape_;
  const T* const* weights_;
  const T* const* biases_;
  bool first_layer_transposed_ = false;
  const T* const* packed_ = nullptr;
  index_t packed_nr_ = 0;
};

// The L2 penalty's gradient on a block of W (scikit-learn's alpha): grad += scale · W,
// scale = alpha / batch rows. grad (rows, cols) row stride ld_grad, W row stride ld.
template <class T>
void add_l2_gradient(T* grad, index_t ld_grad, const T* W, index_t ld, index_t rows,
                     index_t cols, T scale);

// Σ w² in double, in a fixed order (eight partial sums, so that the loop runs at the adders'
// throughput instead of one add's latency per element).
template <class T>
double sum_of_squares(const T* w, index_t ld, index_t rows, index_t cols);

// Every layer's W_l packed once for the float32/float64 GEMM's kernels (gemm.h's prepack_b:
// NR-column panels of Wᵀ spanning all of n_l), so that inference at any batch reads panels
// instead of packing Wᵀ on each call. Memory: Σ_l round_up(n_{l+1}, NR)·n_l elements, the
// weights' size plus the padding of each layer's last panel (NR = 32 floats on AVX-512: a
// 10-class last layer is stored 32 wide). Valid for the ISA active when it was built (the
// panels' width, `nr`, is that ISA's); `isa` says which. Every reader uses `nr`, never the
// active ISA's width: another thread's set_isa may switch the ISA at any time. A snapshot: it
// does not follow later changes to the weights (the owner rebuilds it).
// It also keeps a copy of the biases and the hidden activation, so that a batch of one
// needs nothing else (packed_forward_row).
template <class T>
struct PackedWeights {
  Isa isa = Isa::generic;
  index_t nr = 0;      // the panels' width (prepack_nr of isa)
  NetworkShape shape;  // the net's n_0 … n_L and hidden activation
  std::vector<std::unique_ptr<AlignedBuffer<T>>> buffers;
  std::vector<const T*> layers;  // layers[l]: W_l's panels
  std::vector<std::vector<T>> bias_copies;
  std::vector<const T*> biases;  // biases[l]: b_l (n_{l+1})
  std::size_t elements = 0;      // panels, over all layers
  PackedWeights(const NetworkShape& net_shape, const T* const* weights, const T* const* biases);
  // The panels, or null where the active ISA is no longer the one they were built for.
  const T* const* for_active_isa() const;
};

// logits (n_L) of one contiguous row x (n_0) from the packed weights alone, the bits of
// mlp_forward's batch of one on them; false, computing nothing, unless the panels are
// float32 AVX-512 ones and AVX-512 is still the active ISA (the caller then takes mlp_forward
// with the weights).
bool packed_forward_row(float* logits, const float* x, const PackedWeights<float>& packed);

// Inference: logits (B, n_L) of X (B, n_0) through all layers in one call; the hidden
// activations live in a reused per-thread buffer. packed: the weights' PackedWeights (its
// panels are used where the active ISA matches), or null. A float32 batch of one on packed
// weights with the avx512 ISA reads the panels by mlp_forward_row_avx512.
template <class T>
void mlp_forward(T* logits, StridedMatrix<T> X, index_t B, const NetworkShape& shape,
                 const T* const* weights, const T* const* biases,
                 const PackedWeights<T>* packed = nullptr);
#ifdef FASTMLP_X86
// logits (n_L) of one contiguous row x (n_0) from prepack_b's panels (NR columns each) of every
// layer: a GEMV per layer that vectorises over the panel's NR outputs with the AVX-512 GEMM
// micro-kernel's operations (kernels/avx512's inference_avx512.cpp): the same bits as the row
// in a batch wherever the GEMM runs the packed panels over the whole of K (the mnist-shaped
// net); small products the GEMM takes another way agree to rounding. Returns false, computing
// nothing, for an NR other than 16 or 32.
bool mlp_forward_row_avx512(float* logits, const float* x, const NetworkShape& shape,
                            const float* const* panels, const float* const* biases, index_t NR);
#endif
// The same for the B rows of a CSR matrix (sparse.h); W_0 in its own (n_1, n_0) layout.
template <class T>
void mlp_forward_sparse(T* logits, const SparseRows<T>& X, index_t B, const NetworkShape& shape,
                        const T* const* weights, const T* const* biases);

}  // namespace fastmlp
