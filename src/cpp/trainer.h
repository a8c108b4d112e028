// The fused training engine: mini-batches through the network (network.h), the loss, the L2
// penalty and the optimizer's update (optim.h), step after step, with every buffer sized once.
//
// Legend: L layers, sizes n_0 … n_L (n_0 inputs, n_L logits), B batch rows (≤ max_batch),
// N samples. Layer l (0-based) maps n_l to n_{l+1}: W_l (n_{l+1}, n_l), b_l (n_{l+1}).
// Parameter array i is W_i for i < L and b_{i-L} after: the optimizer's order.
// The parameters and the optimizer are not owned: the parameters are the NumPy arrays of the
// Python MLP, updated in place, and the optimizer is the Python optimizer's, so Python sees
// every step; the optimizer's learning rate is read at every step.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "common.h"
#include "network.h"
#include "optim.h"
#include "sparse.h"
#include "threads.h"

namespace fastmlp {

struct TrainerConfig {
  NetworkShape shape;
  // scikit-learn's L2 penalty: each batch's loss gains alpha/2 · Σ_l ‖W_l‖² / rows and each
  // weight gradient alpha · W_l / rows (biases are not penalised).
  double alpha = 0.0;
  // The data is a CSR matrix (Data::indptr …, sparse.h): layer 0 reads only its non-zeros.
  //
  // Layer 0's weight gradient is then zero outside the columns the batch touches. Where the
  // rule leaves a parameter with a zero gradient unchanged (SGD without momentum and weight
  // decay, alpha = 0) only the touched rows of W_0ᵀ are updated: exact, and the cost of a
  // step follows the batch's non-zeros, not the vocabulary. Otherwise (Adam, momentum, any
  // decay) every element moves each step, as with dense input — Adam's moments of an untouched
  // weight decay (m ← β1 m, v ← β2 v) and the weight still moves by lr·m̂/(√v̂ + ε) — and the
  // step updates all of W_0: exact, the same numbers as the dense engine (to rounding),
  // at the cost of a pass over W_0 and its state per step.
  // lazy_sparse_updates: update only the touched rows whatever the rule (as torch.optim.
  // SparseAdam and TensorFlow's LazyAdam): untouched weights and their moments stay as they
  // are until a batch touches them (Adam's bias correction still counts every step), the L2
  // penalty's gradient reaches touched rows only. Approximate, and much cheaper.
  bool sparse_input = false;
  bool lazy_sparse_updates = false;
  // bfloat16: every GEMM of a step rounds its operands to bf16 and accumulates in float32
  // (gemm.h's PrecisionScope); parameters, optimizer state, gradients' accumulation, biases,
  // activations and the loss stay float32. Products that are not GEMMs — the feature-major
  // path of narrow nets (narrow.h) and sparse input's first layer (sparse.h) — stay float32.
  GemmPrecision precision = GemmPrecision::float32;
};

// What run() did. loss sums are Σ over steps of (batch mean × batch rows), so that a
// caller divides by samples for the mean over the samples seen.
struct StepsResult {
  double data_loss_sum = 0.0;  // the loss of the output layer
  double penalty_sum = 0.0;    // the L2 penalty: per step alpha/2 · Σ‖W‖² (W before it)
  index_t samples = 0, steps = 0;
  bool nonfinite = false;  // the last batch's loss, gradients or update were not finite: that
                           // step was not applied (the parameters are as before it)
  bool epoch_done = false;
  // Steps whose weight updates were proven finite beforehand (update_bound.h) and so wrote no
  // backup of the weights.
  index_t unsaved_steps = 0;
  // The contention guard (threads.h): whether parallel steps lost more time than they saved
  // (the ledger's balance went below zero), after which the rest of the epoch ran on one
  // thread; wall_to_cpu: for the step that fell back, its regions' wall time over their
  // tasks' CPU time (one thread's estimate).
  bool fell_back = false;
  double wall_to_cpu = 0.0;
  // Sparse input: seconds spent copying W_0 (and its optimizer state) into the engine's
  // transposed working copy and back (trainer.cpp), part of the call's time; the caller makes
  // its calls long enough for this to be small.
  double sync_seconds = 0.0;
};

// What gradient_step computed (data-parallel training, _distributed.py).
struct StepGradient {
  double loss = 0.0;        // the batch's data loss (weighted mean over its rows; no penalty)
  index_t rows = 0;         // 0: the epoch was already done, nothing computed
  double weight_sum = 0.0;  // Σ sample weights of the batch (rows without weights)
  double squares = 0.0;     // Σ_l ‖W_l‖² before the step when alpha ≠ 0, else 0
  bool fell_back = false;   // the contention guard's verdict, as StepsResult::fell_back
};

template <class T>
class Trainer {
 public:
  // weights[l], biases[l]: the parameters, contiguous. The optimizer must be bound to the
  // parameter arrays (weights, then biases) in T; it stays in use (Optimizer::users) until the
  // trainer is destroyed.
  Trainer(TrainerConfig config, std::vector<T*> weights, std::vector<T*> biases,
          Optimizer& optimizer, index_t max_batch);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Starts an epoch over n samples: rows in order, or shuffled by a seeded Fisher–Yates.
  void begin_epoch(index_t n_samples, bool shuffle, std::uint64_t seed);
  // Starts an epoch that visits the rows order[0], …, order[n-1] (each in [0, N), checked
  // by the caller; copied): the block-wise shuffle of data read from disk (_shuffle.py).
  void begin_epoch_with_order(const std::int64_t* order, index_t n);
  // The epoch's data: X (N, n_0) rows ldx apart; labels (N) for softmax/sigmoid outputs or
  // targets (N, n_L) for regression; sample weights (N) or null. Validated by the caller
  // (labels and weights are rechecked by the loss kernels). The pointers must stay valid
  // while run() is called for this epoch.
  struct Data {
    const T* X = nullptr;  // dense input, or, with config.sparse_input, the CSR arrays:
    index_t ldx = 0;
    const std::int64_t* indptr = nullptr;   // (N + 1)
    const std::int32_t* indices = nullptr;  // (nnz), each in [0, n_0)
    const T* values = nullptr;              // (nnz)
    const std::int64_t* labels = nullptr;
    const T* targets = nullptr;
    const T* weights = nullptr;
  };
  // Runs up to max_steps mini-batches of the current epoch. With sparse input and
  // min_seconds > 0, also stops once the call has lasted both min_seconds and 20× the copies
  // of W_0 into the working layout and back (then max_steps is only an upper bound): the
  // caller asks for the epoch's remaining steps and gets calls long enough for the copies to
  // cost ≲5 % of the time (sync_seconds), at least one step each.
  StepsResult run(const Data& data, index_t batch_size, index_t max_steps,
                  double min_seconds = 0.0);

  // ---- Data-parallel steps: the gradient and the update as two calls, for an allreduce of
  // the gradient between them (dense input only; run() keeps its update fused in the GEMM).
  // The flat gradient buffer holds, per layer from the LAST to the first, dL/dW_l
  // (n_{l+1}, n_l) then dL/db_l (n_{l+1}): the order in which backward finishes them, so
  // that reverse-layer-order buckets are contiguous slices. gradient_elements() in all.
  index_t gradient_elements() const { return n_parameters_; }
  index_t gradient_offset(index_t layer) const {  // where layer's dL/dW starts
    return gradient_offsets_[static_cast<std::size_t>(layer)];
  }
  // The data-loss gradient of the epoch's next batch (up to batch_size rows) into grad: its
  // (weighted) mean over the batch's rows times `scale`, without the L2 penalty. Updates
  // nothing. With a non-finite loss the buffer is unspecified. (scale multiplies dL/dlogits,
  // B·n_L values, before backward: every gradient is linear in it, so R ranks' 1/R costs no
  // pass over the buffer.)
  StepGradient gradient_step(const Data& data, index_t batch_size, T* grad, double scale = 1.0);
  // The optimizer's update of every parameter from grad (the layout above, modified: the L2
  // penalty's gradient alpha · W / penalty_rows is added), all or nothing: returns false,
  // and leaves the parameters as they were, when any updated value is not finite.
  bool apply_gradients(T* grad, index_t penalty_rows);
  // The same rule on the elements [begin, end) of the layout above (the parameters there)
  // from Σ_s coefficients[s] · grads[s], summed in the order of the sources, chunk by chunk
  // into a scratch block that stays in cache (the sources are only read): ranks of one node that
  // read each other's gradients from shared memory (_distributed.py) reduce and update in one
  // pass, without an allreduce's copies, and every rank gets the same sums bit for bit.
  // Returns whether every updated value is finite; the step stays open until
  // finish_gradient_sum (ranks that update slices of one shared copy agree first).
  bool apply_gradient_sum(const std::vector<const T*>& grads, const std::vector<T>& coefficients,
                          index_t begin, index_t end, index_t penalty_rows);
  // Closes apply_gradient_sum's step: keep, the optimizer's step ends (its count advances);
  // otherwise the parameters in [begin, end) get their values of before it back.
  void finish_gradient_sum(bool keep, index_t begin, index_t end);
  // The parameters in [begin, end) of the layout from flat (laid out the same way), and
  // into it.
  void set_flat_parameters(const T* flat, index_t begin, index_t end);
  void get_flat_parameters(T* flat, index_t begin, index_t end) const;

 private:
  // deadline: stop after the step that passes it (null: max_steps only).
  StepsResult run_steps(const Data& data, index_t batch_size, index_t max_steps,
                        const std::chrono::steady_clock::time_point* deadline);
  Batch<T> gather(const Data& data, index_t first, index_t rows);
  // One training step; returns (data loss, penalty) of the batch, *nonfinite set when the
  // step was not applied.
  void step(const Data& data, index_t first, index_t rows, double* loss, double* penalty,
            bool* nonfinite, StepsResult* result);
  // Forward, loss and backward of one batch into `sink`, on the thread plan of the batch's
  // rows (with the contention guard: result->fell_back). Returns the data loss.
  // dlogits_scale: dL/dlogits is multiplied by it before backward (gradient_step).
  double network_gradients(const Batch<T>& batch, const GradientSink<T>& sink,
                           StepsResult* result, double dlogits_scale = 1.0);
  // Which layers split their products over the pool for batches of `rows` rows: the cost
  // model (gemm_split_pays) on one product of the layer, 2·rows·n_l·n_{l+1} FLOPs; each layer
  // runs two or three such products per step. Recomputed when rows or the thread count
  // change.
  void plan_parallelism(index_t rows);
  // The GradientSink's consumer of layer `layer`'s weight-gradient tiles (GEMM path): each
  // finished tile goes to update_block. One layer's tiles at a time, maybe on several threads.
  struct TileContext {
    Trainer* trainer = nullptr;
    index_t layer = 0, rows = 0;  // rows: the batch's
    const Batch<T>* batch = nullptr;
    bool prove = false;  // try the finite-update proof before the step's first weight tile
  };
  static TileConsumer<T> weight_tile_consumer(void* trainer, index_t layer);
  static void consume_weight_tile(void* context, T* grad, index_t ld_grad, index_t row,
                                  index_t col, index_t m, index_t n);
  // The optimizer's update of an (m, n) block of parameter array i starting at `offset`, row
  // stride ld; grad has row stride ld_grad and is modified (the L2 penalty's gradient is
  // added for weights). Saves the old values to backup_; returns whether the new ones are all
  // finite. For weights with alpha ≠ 0, adds the block's new Σw² to new_squares_.
  // backup_at: where the old values go instead of their place in backup_ (row stride ld).
  bool update_block(int i, index_t offset, index_t ld, T* grad, index_t ld_grad, index_t m,
                    index_t n, index_t batch_rows, T* backup_at = nullptr);
  void restore_parameters();
  // The finite-update proof (update_bound.h) for the step of `batch`, after its forward pass
  // and loss, before its first update: whether the step's weight updates may skip the backup.
  bool prove_update_finite(const Batch<T>& batch);
  // Calls visit(i, offset, flat, count) for each piece of parameter array i (count elements
  // from `offset`) whose gradient lies at [flat, flat + count) within [begin, end) of the flat
  // layout (dense input's parameters).
  template <class Visit>
  void for_each_flat_piece(index_t begin, index_t end, Visit&& visit) const;
  double weight_squares() const;  // Σ_l ‖W_l‖², one pass
  // Sparse input: the GradientSink's consumer of layer 0's weight gradient (network.h). Updates
  // W_0ᵀ row by row, each touched row's gradient computed where it is used (TouchedColumns).
  static void consume_sparse_gradient(void* trainer, const SparseRows<T>& x, index_t B,
                                      const T* grad_a);
  // W_0 and the state arrays the rule reads, into the transposed working copy and back.
  void sync_in();
  void sync_out();
  // Where parameter array i lives while run() runs (W_0ᵀ for sparse input's layer 0), and its
  // optimizer state array k (null: the optimizer's own).
  T* param_array(int i) const;

  TrainerConfig cfg_;
  std::vector<T*> weights_, biases_;
  // What the network reads: weights_, with W_0ᵀ in place of W_0 for sparse input.
  std::vector<T*> network_weights_;
  Network<T> network_;
  Optimizer& optimizer_;
  index_t max_batch_, n_layers_;
  // choose_layout (network.h): feature-major when every layer is narrow (narrow.h).
  Layout layout_ = Layout::rows;
  // Workspace, carved from one block: the network's (network.h); the sink's grad_W[l]
  // (n_{l+1}, n_l) on the feature-major path only (the GEMM path hands weight-gradient tiles
  // straight to the optimizer) and grad_b[l] (n_{l+1}); x_batch_ (max_batch, n_0) gathered
  // rows, transposed on the feature-major path; backup_ every parameter before the step.
  AlignedBuffer<T> block_;
  Workspace<T> ws_;
  GradientSink<T> sink_;
  TileContext tile_context_;
  T* x_batch_ = nullptr;
  AlignedBuffer<std::int64_t> labels_block_;
  std::int64_t* y_batch_ = nullptr;
  T* targets_batch_ = nullptr;  // (max_batch, n_L), regression only
  T* weights_batch_ = nullptr;  // (max_batch)
  T* backup_ = nullptr;
  std::vector<T*> backup_weights_;  // per layer, W_l's place in backup_ (b_l follows it)
  // Whether every weight tile updated in this step stayed finite (tiles may be consumed on
  // several threads at once).
  std::atomic<bool> weights_finite_{true};
  // The finite-update proof: per layer a bound on max |W_l| (known: measured this run()
  // call, or carried from a proven step), whether this step's weight updates skip the
  // backup, whether a proof failed this run() call (then no step tries again until the next
  // call: each try after a failure would reread the weights). After a proven step the bound
  // is the rule's update_bound of the bound and the proof's gradient bound (gradient_bounds_),
  // without a pass over the weights. It grows linearly from step to step, not faster: the
  // proof measures every layer's input afresh each step and no weight bound feeds its own
  // layer's gradient bound. (Measuring each weight or gradient tile's max as it was updated
  // cost as much as the backup it saves.)
  std::vector<double> weight_max_, gradient_bounds_;
  bool weight_max_known_ = false, unsaved_step_ = false, proof_failed_ = false;
  // The L2 penalty without a pass over the weights per step: ‖W‖² before this step, and the
  // updated blocks' Σw² as they are written. Each block's sum is rounded to a fixed-point
  // integer (a unit of squares_unit_) before it is added, so the total does not depend on the
  // order in which threads finish their blocks (bitwise results for any thread count);
  // squares_unit_ puts the previous total near 2^60, ample headroom for the step's change.
  // A block too large for that headroom sets squares_overflow_, and the step then sums W
  // again (one pass).
  double squares_ = 0.0, squares_unit_ = 0.0;
  std::atomic<std::uint64_t> new_squares_{0};
  std::atomic<bool> squares_overflow_{false};
  std::vector<std::int64_t> order_;  // sized once per epoch length, then reused
  index_t n_parameters_ = 0;
  std::vector<index_t> gradient_offsets_;  // per layer, in the flat gradient buffer
  GradientSink<T> flat_sink_;              // gradient_step's: into the flat buffer
  AlignedBuffer<T> sum_chunk_;             // apply_gradient_sum's scratch (kSumChunk)
  // plan_parallelism's result: per layer, serial or parallel; serial_plan_ is all serial.
  std::vector<ParallelMode> layer_mode_, serial_plan_;
  index_t plan_rows_ = -1;
  int plan_threads_ = 0;
  bool any_parallel_layer_ = false;
  bool fell_back_this_epoch_ = false;
  index_t n_samples_ = 0, next_sample_ = 0;
  bool shuffled_ = false;

  // Sparse input (config.sparse_input). The network reads layer 0 as W_0ᵀ (n_0, n_1) (its
  // rows are what a non-zero selects: sparse.h), and the optimizer updates it and its state in
  // that layout: a working copy in w0t_block_ of W_0 (w0t_) and of the state arrays the rule
  // reads (state_t_), made at the first run() of an epoch (Python may have changed W_0 between
  // epochs) and written back to W_0 and the optimizer at the end of every run(), so that
  // Python sees the parameters after every call.
  AlignedBuffer<T> w0t_block_;
  T* w0t_ = nullptr;
  std::array<T*, kMaxOptimizerState> state_t_{};
  int synced_states_ = 0;
  double copy_seconds_ = 0.0;  // the slowest copy into or out of the working layout so far
  bool working_copy_current_ = false;
  SparseRows<T> sparse_batch_;
  TouchedColumns<T> touched_;
  bool touched_only_ = false;   // this step updates only the touched rows of W_0ᵀ
  AlignedBuffer<T> gradient_rows_;  // one (n_1) row per task of the update
  AlignedBuffer<T> touched_backup_;  // (touched, n_1): touched-only steps' backup of W_0ᵀ
  AlignedBuffer<T> zero_row_;       // (n_1) zeros: the gradient of an untouched row
  T* zeros_ = nullptr;
};

// Testing: every run() call from now on leaves the finite-update proof out (every step backs up
// its weights, as before the proof): the two must give the same bits. Returns the previous
// setting.
bool testing_disable_update_proof(bool disable);

// Seeded permutation of 0 … n-1 (Fisher–Yates over splitmix64): the same on every platform.
void shuffled_indices(std::int64_t* out, index_t n, std::uint64_t seed);

}  // namespace fastmlp
