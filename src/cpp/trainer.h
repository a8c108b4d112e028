// The fused training engine: forward, loss gradient, backward and optimizer update of an MLP,
// step after step, with every buffer sized once.
//
// Legend: L layers, sizes n_0 … n_L (n_0 inputs, n_L logits), B batch rows (≤ max_batch),
// N samples. Layer l (0-based) maps n_l to n_{l+1}: W_l (n_{l+1}, n_l), b_l (n_{l+1}).
// The parameters and the optimizer state are not owned: they are the NumPy arrays of the
// Python MLP and optimizer, updated in place, so Python sees every step.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "common.h"
#include "optim.h"
#include "threads.h"

namespace fastmlp {

// softmax + NLL (labels), one logit + sigmoid + BCE (labels 0/1), identity + squared error
// (regression targets).
enum class OutputKind { softmax, sigmoid, identity };

struct TrainerConfig {
  std::vector<index_t> sizes;  // n_0 … n_L
  Activation hidden = Activation::relu;
  OutputKind output = OutputKind::softmax;
  bool adam = false;            // else SGD
  double lr = 0.01, momentum = 0.0, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // scikit-learn's L2 penalty: each batch's loss gains alpha/2 · Σ_l ‖W_l‖² / rows and each
  // weight gradient alpha · W_l / rows (biases are not penalised).
  double alpha = 0.0;
  bool nesterov = false;
};

// Per parameter array, in the Python order weights[0..L-1] then biases[0..L-1]:
// SGD: state_a = momentum buffer; Adam: state_a = exp_avg, state_b = exp_avg_sq.
template <class T>
struct TrainerParameters {
  std::vector<T*> weights, biases, state_a, state_b;
  std::vector<char> sgd_first_step;  // per parameter array: the momentum buffer starts here
  std::int64_t optimizer_steps = 0;  // Adam's t so far
};

struct StepsResult {
  double loss_sum = 0.0;  // Σ over batches of (batch mean loss × batch rows)
  index_t samples = 0, steps = 0;
  bool nonfinite = false;  // the last batch's loss, gradients or update were not finite: that
                           // step was not applied (the parameters are as before it)
  bool epoch_done = false;
  // The contention guard (threads.h): steps whose products were split over the pool, and
  // whether parallel steps lost more time than they saved (the ledger's balance went below
  // zero), after which the rest of the epoch ran on one thread. wall_to_cpu: for the step
  // that fell back, its regions' wall time over their tasks' CPU time (one thread's estimate).
  index_t parallel_steps = 0;
  bool fell_back = false;
  double wall_to_cpu = 0.0;
};

template <class T>
class Trainer {
 public:
  Trainer(TrainerConfig config, TrainerParameters<T> params, index_t max_batch);

  // Starts an epoch over n samples: rows in order, or shuffled by a seeded Fisher–Yates.
  void begin_epoch(index_t n_samples, bool shuffle, std::uint64_t seed);
  // The epoch's data: X (N, n_0) rows ldx apart; labels (N) for softmax/sigmoid outputs or
  // targets (N, n_L) for regression; sample weights (N) or null. Validated by the caller
  // (labels and weights are rechecked by the loss kernels). The pointers must stay valid
  // while run() is called for this epoch.
  struct Data {
    const T* X = nullptr;
    index_t ldx = 0;
    const std::int64_t* labels = nullptr;
    const T* targets = nullptr;
    const T* weights = nullptr;
  };
  // Runs up to max_steps mini-batches of the current epoch.
  StepsResult run(const Data& data, index_t batch_size, index_t max_steps);

  const TrainerParameters<T>& parameters() const { return params_; }
  const std::vector<std::int64_t>& order() const { return order_; }

 private:
  // One mini-batch: its rows (gathered when shuffled), labels, targets and weights.
  struct Batch {
    const T* x = nullptr;  // (rows, n_0) rows ld_x apart; feature-major (n_0, rows) if narrow_
    index_t ld_x = 0, rows = 0;
    const std::int64_t* labels = nullptr;
    const T* targets = nullptr;
    const T* weights = nullptr;
  };
  Batch gather(const Data& data, index_t first, index_t rows);
  double step(const Data& data, index_t first, index_t rows, bool* nonfinite,
              StepsResult* result);
  // Which layers split their products over the pool for batches of `rows` rows: the cost
  // model (gemm_split_pays) on one product of the layer, 2·rows·n_l·n_{l+1} FLOPs; each layer
  // runs two or three such products per step. Recomputed when rows or the thread count
  // change.
  void plan_parallelism(index_t rows);
  // Forward, loss and backward of one batch into grad_W_ / grad_b_; returns the batch loss
  // (L2 penalty included), and stops after the loss if it is not finite.
  double gemm_gradients(const Batch& batch);
  double narrow_gradients(const Batch& batch);  // every layer feature-major (narrow.h)
  double batch_loss(T* dlogits, const T* logits, const Batch& batch);
  // The optimizer step of one finished tile of layer `layer`'s weight gradient (a
  // TileConsumer, see gemm.h): tile (m, n) at (row, col) of W_layer; rows: the batch rows.
  struct WeightTileUpdate {
    Trainer* trainer;
    index_t layer, rows;
  };
  static void consume_weight_tile(void* context, T* grad, index_t ld_grad, index_t row,
                                  index_t col, index_t m, index_t n);
  // One optimizer step (SGD or Adam, with the L2 penalty for weights) on an (m, n) block of
  // parameter array i (weights[0..L-1], then biases[0..L-1]) starting at `offset`, row stride
  // ld; grad has row stride ld_grad and is modified. Saves the old values to backup_; returns
  // whether the new ones are all finite.
  bool update_block(int i, index_t offset, index_t ld, T* grad, index_t ld_grad, index_t m,
                    index_t n, index_t batch_rows);
  void restore_parameters();

  TrainerConfig cfg_;
  TrainerParameters<T> params_;
  index_t max_batch_, n_layers_;
  // Every layer at most narrow_max_width() wide: the step runs feature-major (narrow.h) and
  // act_, grad_ and x_batch_ hold transposed (features, rows) matrices.
  bool narrow_ = false;
  // Workspace, carved from one block: per layer l, act_[l] (max_batch, n_{l+1}) the layer's
  // output (ReLU applied; the last is the logits); grad_[0/1] (max_batch, max n) ping-pong
  // gradients w.r.t. layer outputs; grad_b_[l] (n_{l+1}); grad_W_[l] (n_{l+1}, n_l) on the
  // feature-major path only (the GEMM path hands weight-gradient tiles straight to the
  // optimizer); x_batch_ (max_batch, n_0) gathered rows.
  AlignedBuffer<T> block_;
  std::vector<T*> act_, grad_W_, grad_b_;
  T* grad_[2] = {nullptr, nullptr};
  T* x_batch_ = nullptr;
  AlignedBuffer<std::int64_t> labels_block_;
  std::int64_t* y_batch_ = nullptr;
  T* targets_batch_ = nullptr;  // (max_batch, n_L), regression only
  T* weights_batch_ = nullptr;  // (max_batch)
  T* backup_ = nullptr;         // every parameter, before the step's update
  std::vector<T*> backup_weights_;  // per layer, W_l's place in backup_ (b_l follows it)
  // Whether every weight tile updated in this step stayed finite (tiles may be consumed on
  // several threads at once).
  std::atomic<bool> weights_finite_{true};
  AdamCoefficients<T> adam_{};  // this step's, when cfg_.adam
  T* logits_rows_ = nullptr;    // (max_batch, n_L), narrow path only: row-major logits
  std::vector<std::int64_t> order_;  // sized once per epoch length, then reused
  // plan_parallelism's result: per layer, serial or parallel; and for this step, whether the
  // plan is used (false: every product on the calling thread).
  std::vector<ParallelMode> layer_mode_;
  index_t plan_rows_ = -1;
  int plan_threads_ = 0;
  bool any_parallel_layer_ = false, parallel_step_ = false;
  bool fell_back_this_epoch_ = false;
  index_t n_samples_ = 0, next_sample_ = 0;
  bool shuffled_ = false;
};

// Seeded permutation of 0 … n-1 (Fisher–Yates over splitmix64): the same on every platform.
void shuffled_indices(std::int64_t* out, index_t n, std::uint64_t seed);

// Inference: logits (B, n_L) of X (B, n_0) through all layers in one call; hidden activations
// live in a reused per-thread buffer.
template <class T>
void mlp_forward(T* logits, const T* X, index_t rs_x, index_t cs_x, index_t B,
                 const std::vector<index_t>& sizes, const std::vector<const T*>& weights,
                 const std::vector<const T*>& biases, Activation hidden);

}  // namespace fastmlp
