// The fused training engine (see trainer.h).
#include "trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "gemm/context.h"
#include "update_bound.h"

namespace fastmlp {

namespace {

std::atomic<bool> g_update_proof_disabled{false};  // testing_disable_update_proof

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, bound) without modulo bias (Lemire's multiply-shift with rejection).
std::uint64_t bounded(std::uint64_t& state, std::uint64_t bound) {
  const std::uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const unsigned __int128 product =
        static_cast<unsigned __int128>(splitmix64(state)) * static_cast<unsigned __int128>(bound);
    if (static_cast<std::uint64_t>(product) >= threshold)
      return static_cast<std::uint64_t>(product >> 64);
  }
}

// The fixed-point squares (trainer.h): the previous total maps to 2^60 units, a block may add
// at most 2^62, so the uint64 sum cannot wrap before an overflow is noticed.
constexpr double kSquaresScale = 1152921504606846976.0;  // 2^60
constexpr double kSquaresLimit = 4611686018427387904.0;  // 2^62

index_t rounded(index_t n) { return (n + 15) / 16 * 16; }

}  // namespace

bool testing_disable_update_proof(bool disable) {
  return g_update_proof_disabled.exchange(disable);
}

void shuffled_indices(std::int64_t* out, index_t n, std::uint64_t seed) {
  for (index_t i = 0; i < n; ++i) out[i] = i;
  std::uint64_t state = seed;
  for (index_t i = n - 1; i > 0; --i) {
    const index_t j = static_cast<index_t>(bounded(state, static_cast<std::uint64_t>(i + 1)));
    std::swap(out[i], out[j]);
  }
}

template <class T>
Trainer<T>::Trainer(TrainerConfig config, std::vector<T*> weights, std::vector<T*> biases,
                    Optimizer& optimizer, index_t max_batch)
    : cfg_(std::move(config)),
      weights_(std::move(weights)),
      biases_(std::move(biases)),
      network_weights_(weights_),
      network_(cfg_.shape, network_weights_.data(), biases_.data(), cfg_.sparse_input),
      optimizer_(optimizer),
      max_batch_(max_batch) {
  const std::vector<index_t>& n = cfg_.shape.sizes;
  n_layers_ = cfg_.shape.layers();
  if (!optimizer_.bound() || optimizer_.dtype() != dtype_of<T>() ||
      static_cast<index_t>(optimizer_.shapes().size()) != 2 * n_layers_)
    throw std::invalid_argument("the optimizer is not bound to this model's parameters");
  for (index_t l = 0; l < n_layers_; ++l)
    if (optimizer_.numel(static_cast<int>(l)) != n[l + 1] * n[l] ||
        optimizer_.numel(static_cast<int>(n_layers_ + l)) != n[l + 1])
      throw std::invalid_argument("the optimizer's state does not match the parameters");
  // Sparse batches run on the row-major layout (the narrow path's gathers are dense).
  layout_ = cfg_.sparse_input ? Layout::rows : choose_layout(n, max_batch_);
  // Dense input is gathered into x_batch_ (max_batch, n_0); sparse input needs none of it
  // (n_0 may be a vocabulary of 10⁶).
  const index_t x_batch_elements = cfg_.sparse_input ? 0 : max_batch_ * n[0];
  // One block for every float buffer: the network's workspace, then the trainer's own.
  index_t n_parameters = 0;
  for (index_t l = 0; l < n_layers_; ++l) n_parameters += n[l + 1] * (n[l] + 1);
  index_t total = Network<T>::workspace_elements(cfg_.shape, max_batch_, layout_) +
                  rounded(x_batch_elements) + rounded(max_batch_ * n.back()) +
                  rounded(max_batch_) + rounded(n_parameters);
  for (index_t l = 0; l < n_layers_; ++l) {
    total += rounded(n[l + 1]);
    if (layout_ == Layout::features) total += rounded(n[l + 1] * n[l]);
  }
  T* p = block_.reserve(static_cast<std::size_t>(total));
  ws_ = Network<T>::carve_workspace(p, cfg_.shape, max_batch_, layout_);
  p += Network<T>::workspace_elements(cfg_.shape, max_batch_, layout_);
  auto carve = [&](index_t count) {
    T* piece = p;
    p += rounded(count);
    return piece;
  };
  x_batch_ = carve(x_batch_elements);
  targets_batch_ = carve(max_batch_ * n.back());
  weights_batch_ = carve(max_batch_);
  backup_ = carve(n_parameters);
  for (index_t l = 0, offset = 0; l < n_layers_; ++l) {  // per layer, W_l then b_l
    backup_weights_.push_back(backup_ + offset);
    offset += n[l + 1] * (n[l] + 1);
  }
  n_parameters_ = n_parameters;
  gradient_offsets_.assign(static_cast<std::size_t>(n_layers_), 0);
  for (index_t l = n_layers_ - 1, offset = 0; l >= 0; --l) {  // the last layer first
    gradient_offsets_[static_cast<std::size_t>(l)] = offset;
    offset += n[l + 1] * (n[l] + 1);
  }
  flat_sink_.grad_W.assign(static_cast<std::size_t>(n_layers_), nullptr);
  flat_sink_.grad_b.assign(static_cast<std::size_t>(n_layers_), nullptr);
  for (index_t l = 0; l < n_layers_; ++l) {
    // Weight gradients are stored only on the feature-major path; the GEMM path hands them
    // to the optimizer tile by tile.
    sink_.grad_W.push_back(layout_ == Layout::features ? carve(n[l + 1] * n[l]) : nullptr);
    sink_.grad_b.push_back(carve(n[l + 1]));
  }
  if (layout_ == Layout::rows) {
    sink_.consumer_for_layer = &Trainer::weight_tile_consumer;
    sink_.context = this;
  }
  y_batch_ = labels_block_.reserve(static_cast<std::size_t>(max_batch_));
  serial_plan_.assign(static_cast<std::size_t>(n_layers_), ParallelMode::serial);
  if (cfg_.sparse_input) {
    // W_0ᵀ and one transposed copy per state array the rule may read.
    const std::size_t w0_size = static_cast<std::size_t>(n[0] * n[1]);
    const int n_states = static_cast<int>(optimizer_.state_names().size());
    w0t_ = w0t_block_.reserve(w0_size * static_cast<std::size_t>(1 + n_states));
    for (int k = 0; k < n_states; ++k)
      state_t_[static_cast<std::size_t>(k)] = w0t_ + static_cast<std::size_t>(k + 1) * w0_size;
    network_weights_[0] = w0t_;
    touched_.reset(n[0]);
    zeros_ = zero_row_.reserve(static_cast<std::size_t>(n[1]));
    std::fill_n(zeros_, n[1], T(0));
    sink_.sparse_consumer = &Trainer::consume_sparse_gradient;
  }
  optimizer_.users += 1;
}

template <class T>
Trainer<T>::~Trainer() {
  optimizer_.users -= 1;
}

template <class T>
void Trainer<T>::begin_epoch(index_t n_samples, bool shuffle, std::uint64_t seed) {
  n_samples_ = n_samples;
  next_sample_ = 0;
  shuffled_ = shuffle;
  fell_back_this_epoch_ = false;
  working_copy_current_ = false;  // W_0 may have changed since the last run()
  if (shuffle) {
    order_.resize(static_cast<std::size_t>(n_samples));  // allocates on the first epoch only
    shuffled_indices(order_.data(), n_samples, seed);
  }
}

template <class T>
void Trainer<T>::begin_epoch_with_order(const std::int64_t* order, index_t n) {
  begin_epoch(n, false, 0);
  order_.assign(order, order + n);
  shuffled_ = true;
}

template <class T>
double Trainer<T>::weight_squares() const {
  double total = 0.0;
  for (index_t l = 0; l < n_layers_; ++l)
    total += sum_of_squares(param_array(static_cast<int>(l)), 0, 1,
                            cfg_.shape.sizes[l + 1] * cfg_.shape.sizes[l]);
  return total;
}

template <class T>
T* Trainer<T>::param_array(int i) const {
  if (i == 0 && w0t_) return w0t_;
  return i < n_layers_ ? weights_[static_cast<std::size_t>(i)]
                       : biases_[static_cast<std::size_t>(i - n_layers_)];
}

template <class T>
void Trainer<T>::sync_in() {
  const index_t n_in = cfg_.shape.sizes[0], n_out = cfg_.shape.sizes[1];
  transpose_blocked(w0t_, weights_[0], n_out, n_in);
  synced_states_ = optimizer_.states_read();
  for (int k = 0; k < synced_states_; ++k)
    transpose_blocked(state_t_[static_cast<std::size_t>(k)], optimizer_.template state<T>(0, k),
                      n_out, n_in);
  working_copy_current_ = true;
}

template <class T>
void Trainer<T>::sync_out() {
  const index_t n_in = cfg_.shape.sizes[0], n_out = cfg_.shape.sizes[1];
  transpose_blocked(weights_[0], w0t_, n_in, n_out);
  for (int k = 0; k < synced_states_; ++k)
    transpose_blocked(optimizer_.template state<T>(0, k), state_t_[static_cast<std::size_t>(k)],
                      n_in, n_out);
}

template <class T>
StepsResult Trainer<T>::run(const Data& data, index_t batch_size, index_t max_steps,
                            double min_seconds) {
  if (!cfg_.sparse_input) return run_steps(data, batch_size, max_steps, nullptr);
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  const auto call_started = Clock::now();
  // A rule that reads more state than when the copy was made (momentum set since) needs that
  // state in the working layout too.
  double sync_in_seconds = 0.0;
  if (!working_copy_current_ || optimizer_.states_read() > synced_states_) {
    sync_in();
    sync_in_seconds = seconds_since(call_started);
    copy_seconds_ = sync_in_seconds;
  }
  // The call goes on until it has lasted kCallsPerCopy times its two copies (in and out, each
  // about copy_seconds_), so that they cost at most ~1/kCallsPerCopy of the time, or until
  // max_steps; at least min_seconds when the caller gives it (then max_steps is its bound).
  constexpr double kCallsPerCopy = 20.0;
  const double budget = std::max(min_seconds, kCallsPerCopy * 2.0 * copy_seconds_);
  const auto deadline =
      call_started + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(budget));
  StepsResult result;
  try {
    result = run_steps(data, batch_size, max_steps, min_seconds > 0.0 ? &deadline : nullptr);
  } catch (...) {
    sync_out();  // whatever the steps did is written back: W_0 stays W_0ᵀ's transpose
    throw;
  }
  const auto out_started = Clock::now();
  sync_out();
  const double sync_out_seconds = seconds_since(out_started);
  copy_seconds_ = std::max(copy_seconds_, sync_out_seconds);
  result.sync_seconds = sync_in_seconds + sync_out_seconds;
  return result;
}

template <class T>
StepsResult Trainer<T>::run_steps(const Data& data, index_t batch_size, index_t max_steps,
                                  const std::chrono::steady_clock::time_point* deadline) {
  StepsResult result;
  batch_size = std::min(batch_size, max_batch_);
  // The weights may have changed between calls (a callback, a checkpoint): one pass per call.
  if (cfg_.alpha != 0.0) squares_ = weight_squares();
  weight_max_known_ = false;  // likewise: the proof's first try this call measures them again
  proof_failed_ = g_update_proof_disabled.load(std::memory_order_relaxed);
  while (result.steps < max_steps && next_sample_ < n_samples_) {
    const index_t rows = std::min(batch_size, n_samples_ - next_sample_);
    double loss = 0.0, penalty = 0.0;
    bool nonfinite = false;
    step(data, next_sample_, rows, &loss, &penalty, &nonfinite, &result);
    if (nonfinite) {
      result.nonfinite = true;
      result.data_loss_sum = loss;
      result.penalty_sum = penalty;
      return result;
    }
    result.data_loss_sum += loss * static_cast<double>(rows);
    result.penalty_sum += penalty * static_cast<double>(rows);
    result.samples += rows;
    result.steps += 1;
    next_sample_ += rows;
    if (deadline && std::chrono::steady_clock::now() >= *deadline) break;
  }
  result.epoch_done = next_sample_ >= n_samples_;
  return result;
}

template <class T>
Batch<T> Trainer<T>::gather(const Data& data, index_t first, index_t rows) {
  const std::vector<index_t>& n = cfg_.shape.sizes;
  const index_t n_logits = n.back();
  Batch<T> batch;
  batch.rows = rows;
  // Consecutive rows are read in place; shuffled rows are gathered. The feature-major path
  // always copies X, transposed, into x_batch_ (n_0, rows).
  const std::int64_t* order = shuffled_ ? order_.data() + first : nullptr;
  auto row = [&](index_t r) { return order ? order[r] : first + r; };
  if (cfg_.sparse_input) {  // the batch's rows are read in place, through the order
    sparse_batch_.indptr = data.indptr;
    sparse_batch_.indices = data.indices;
    sparse_batch_.values = data.values;
    sparse_batch_.row_ids = order;
    sparse_batch_.first = first;
    batch.sparse = &sparse_batch_;
  } else if (layout_ == Layout::features) {
    for (index_t r = 0; r < rows; ++r) {
      const T* x_row = data.X + row(r) * data.ldx;
      for (index_t p = 0; p < n[0]; ++p) x_batch_[p * rows + r] = x_row[p];
    }
    batch.x = StridedMatrix<T>{x_batch_, rows, 1};
  } else if (order) {
    for (index_t r = 0; r < rows; ++r)
      std::copy_n(data.X + order[r] * data.ldx, n[0], x_batch_ + r * n[0]);
    batch.x = StridedMatrix<T>{x_batch_, n[0], 1};
  } else {
    batch.x = StridedMatrix<T>{data.X + first * data.ldx, data.ldx, 1};
  }
  batch.labels = data.labels ? data.labels + first : nullptr;
  batch.targets = data.targets ? data.targets + first * n_logits : nullptr;
  batch.weights = data.weights ? data.weights + first : nullptr;
  if (order) {
    if (batch.labels) {
      for (index_t r = 0; r < rows; ++r) y_batch_[r] = data.labels[order[r]];
      batch.labels = y_batch_;
    }
    if (batch.targets) {
      for (index_t r = 0; r < rows; ++r)
        std::copy_n(data.targets + order[r] * n_logits, n_logits, targets_batch_ + r * n_logits);
      batch.targets = targets_batch_;
    }
    if (batch.weights) {
      for (index_t r = 0; r < rows; ++r) weights_batch_[r] = data.weights[order[r]];
      batch.weights = weights_batch_;
    }
  }
  return batch;
}

template <class T>
TileConsumer<T> Trainer<T>::weight_tile_consumer(void* trainer, index_t layer) {
  Trainer& t = *static_cast<Trainer*>(trainer);
  t.tile_context_.layer = layer;
  // The top layer's weight tiles are the step's first update: prove the step finite first.
  if (layer == t.n_layers_ - 1 && t.tile_context_.prove) {
    t.tile_context_.prove = false;
    t.unsaved_step_ = t.prove_update_finite(*t.tile_context_.batch);
    if (!t.unsaved_step_) t.proof_failed_ = true;
  }
  return TileConsumer<T>{&Trainer::consume_weight_tile, &t.tile_context_};
}

template <class T>
void Trainer<T>::consume_weight_tile(void* context, T* grad, index_t ld_grad, index_t row,
                                     index_t col, index_t m, index_t n) {
  const TileContext& u = *static_cast<const TileContext*>(context);
  Trainer& t = *u.trainer;
  const index_t l = u.layer, n_in = t.cfg_.shape.sizes[l];
  // The tile starts at element row · n_in + col of W_l (n_out, n_in).
  if (!t.update_block(static_cast<int>(l), row * n_in + col, n_in, grad, ld_grad, m, n, u.rows))
    t.weights_finite_.store(false, std::memory_order_relaxed);
#if defined(__GNUC__)
  // The packed GEMM hands over a column panel's tiles top to bottom: ask for the next tile's
  // rows of W, its optimizer state and its backup now, so that they arrive while the kernel
  // computes that tile. (A wide layer's W is larger than L2 and its rows are 4 KiB apart,
  // beyond the reach of the hardware prefetcher: without this the tile-by-tile update of the
  // wide net waited on memory.)
  const index_t next_end = std::min(row + 2 * m, t.cfg_.shape.sizes[l + 1]);
  constexpr index_t kLine = 64 / sizeof(T);
  const int n_state = t.optimizer_.states_read();
  for (index_t i = row + m; i < next_end; ++i)
    for (index_t j = 0; j < n; j += kLine) {
      const index_t at = i * n_in + col + j;
      __builtin_prefetch(t.weights_[l] + at, 1);
      if (!t.unsaved_step_) __builtin_prefetch(t.backup_weights_[l] + at, 1);
      for (int k = 0; k < n_state; ++k)
        __builtin_prefetch(t.optimizer_.template state<T>(static_cast<int>(l), k) + at, 1);
    }
#endif
}

template <class T>
bool Trainer<T>::prove_update_finite(const Batch<T>& batch) {
  const std::vector<index_t>& n = cfg_.shape.sizes;
  if (batch.x.col_stride != 1) return false;
  const MaxAbsKernel<T> max_abs = active_gemm_context<T>().max_abs;
  if (!weight_max_known_) {  // one pass over the weights per run() call
    weight_max_.resize(static_cast<std::size_t>(n_layers_));
    for (index_t l = 0; l < n_layers_; ++l)
      weight_max_[static_cast<std::size_t>(l)] = max_abs(weights_[l], n[l + 1], n[l], n[l]);
    weight_max_known_ = true;
  }
  StepMaxima maxima;
  maxima.weights = weight_max_;
  for (index_t l = 0; l < n_layers_; ++l)
    maxima.biases.push_back(max_abs(biases_[l], 1, n[l + 1], 0));
  maxima.inputs.push_back(max_abs(batch.x.data, batch.rows, n[0], batch.x.row_stride));
  for (index_t l = 0; l + 1 < n_layers_; ++l)
    maxima.inputs.push_back(max_abs(ws_.act[l], batch.rows, n[l + 1], n[l + 1]));
  maxima.output_gradient = max_abs(ws_.grad[0], batch.rows, n.back(), n.back());
  // Network::backward's dL/da of the layer below the output (grad[1]): its input-gradient
  // product and activation derivative ran before the output layer's weight tiles.
  if (n_layers_ >= 2)
    maxima.below_output_gradient =
        max_abs(ws_.grad[1], batch.rows, n[n_layers_ - 1], n[n_layers_ - 1]);
  gradient_bounds_ = proven_gradient_bounds(
      cfg_.shape, batch.rows, cfg_.alpha, maxima, optimizer_,
      static_cast<double>(std::numeric_limits<T>::epsilon()),
      static_cast<double>(std::numeric_limits<T>::max()));
  return !gradient_bounds_.empty();
}

template <class T>
void Trainer<T>::plan_parallelism(index_t rows) {
  const int threads = get_num_threads();
  if (rows == plan_rows_ && threads == plan_threads_) return;
  plan_rows_ = rows;
  plan_threads_ = threads;
  const std::vector<index_t>& n = cfg_.shape.sizes;
  layer_mode_.assign(static_cast<std::size_t>(n_layers_), ParallelMode::serial);
  any_parallel_layer_ = false;
  if (layout_ == Layout::features || threads <= 1) return;  // feature-major: no GEMM
  if (cfg_.sparse_input) {
    // Layer 0's sparse kernels decide from the batch's non-zeros (sparse_split_pays), which
    // change from batch to batch; the step is measured whenever they may split.
    layer_mode_[0] = ParallelMode::automatic;
    any_parallel_layer_ = true;
  }
  for (index_t l = cfg_.sparse_input ? 1 : 0; l < n_layers_; ++l) {
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(n[l]) *
                         static_cast<double>(n[l + 1]);
    if (gemm_split_pays<T>(flops)) {
      layer_mode_[l] = ParallelMode::parallel;
      any_parallel_layer_ = true;
    }
  }
}

template <class T>
void Trainer<T>::step(const Data& data, index_t first, index_t rows, double* loss,
                      double* penalty, bool* nonfinite, StepsResult* result) {
  const std::vector<index_t>& n = cfg_.shape.sizes;
  const Batch<T> batch = gather(data, first, rows);
  optimizer_.begin_step();  // the per-step constants, from the learning rate as it is now
  *penalty = 0.0;
  if (cfg_.alpha != 0.0) {
    *penalty = 0.5 * cfg_.alpha * squares_ / static_cast<double>(rows);
    squares_unit_ = squares_ > 0.0 ? squares_ / kSquaresScale : 0.0;
    new_squares_.store(0, std::memory_order_relaxed);
    squares_overflow_.store(false, std::memory_order_relaxed);
  }
  if (cfg_.sparse_input) {
    touched_only_ = cfg_.lazy_sparse_updates ||
                    (optimizer_.zero_gradient_is_no_op() && cfg_.alpha == 0.0);
    // Lazy updates with a penalty change only some rows: the running Σw² (which adds up every
    // updated block) cannot follow; this step's total is summed again afterwards.
    if (touched_only_ && cfg_.alpha != 0.0)
      squares_overflow_.store(true, std::memory_order_relaxed);
  }
  weights_finite_.store(true, std::memory_order_relaxed);
  tile_context_.trainer = this;
  tile_context_.rows = rows;
  tile_context_.batch = &batch;
  // The proof covers the dense GEMM path, whose weight tiles go to the optimizer as they are
  // computed (the others update whole arrays after the step's products).
  tile_context_.prove = !proof_failed_ && layout_ == Layout::rows && !cfg_.sparse_input;
  unsaved_step_ = false;
  // However the step ends (an exception included), later updates (apply_gradient_sum's) back
  // up again.
  struct EndsUnsaved {
    bool& unsaved;
    ~EndsUnsaved() { unsaved = false; }
  } ends_unsaved{unsaved_step_};
  *loss = network_gradients(batch, sink_, result);
  tile_context_.prove = false;
  if (!std::isfinite(*loss + *penalty)) {  // nothing was updated yet
    *nonfinite = true;
    weight_max_known_ = false;
    return;
  }

  // The update is all or nothing: each parameter's update pass also saves its old values and
  // checks the new ones, and if anything became NaN or infinite (overflowing gradients or an
  // overflowing step) the old values are put back, so the model always keeps its last finite
  // weights at the cost of one extra write per parameter (none for the weights of a step
  // proven finite beforehand: update_bound.h, prove_update_finite).
  // The GEMM path has updated the weights already, tile by tile (consume_weight_tile).
  bool finite = weights_finite_.load(std::memory_order_relaxed);
  for (index_t l = 0; l < n_layers_; ++l) {
    const index_t w_size = n[l + 1] * n[l], b_size = n[l + 1];
    if (layout_ == Layout::features)
      finite &= update_block(static_cast<int>(l), 0, w_size, sink_.grad_W[l], w_size, 1, w_size,
                             rows);
    finite &= update_block(static_cast<int>(n_layers_ + l), 0, b_size, sink_.grad_b[l], b_size, 1,
                           b_size, rows);
  }
  if (!finite && unsaved_step_)  // cannot be: the proof bounds every value the update wrote
    throw std::logic_error("a step proven finite produced a non-finite parameter");
  if (unsaved_step_) {  // the bounds after the step, for the next one's proof
    for (index_t l = 0; l < n_layers_; ++l) {
      const std::size_t i = static_cast<std::size_t>(l);
      weight_max_[i] = optimizer_.update_bound(weight_max_[i], gradient_bounds_[i]);
    }
    result->unsaved_steps += 1;
  } else {
    weight_max_known_ = false;  // the weights changed by an amount the proof did not bound
  }
  if (!finite) {
    restore_parameters();
    *nonfinite = true;
    *loss = std::numeric_limits<double>::infinity();
    return;
  }
  optimizer_.end_step();
  if (cfg_.alpha != 0.0)
    squares_ = squares_unit_ == 0.0 || squares_overflow_.load(std::memory_order_relaxed)
                   ? weight_squares()
                   : static_cast<double>(new_squares_.load(std::memory_order_relaxed)) *
                         squares_unit_;
}

template <class T>
double Trainer<T>::network_gradients(const Batch<T>& batch, const GradientSink<T>& sink,
                                     StepsResult* result, double dlogits_scale) {
  // The contention guard: a step that uses the pool is measured (RegionStats) and reported
  // to the process's ledger (threads.h); once parallel steps have lost more time than they
  // saved, the rest of the epoch runs on one thread, and no engine in the process tries the
  // pool again before the back-off time.
  // Either way every product is computed the same, so the results do not change.
  plan_parallelism(batch.rows);
  const bool parallel = any_parallel_layer_ && !fell_back_this_epoch_ && parallel_retry_due();
  ws_.layer_mode = parallel ? layer_mode_.data() : serial_plan_.data();
  RegionStats regions;
  double loss = 0.0;
  {
    const RegionStatsScope measure(parallel ? &regions : nullptr);
    const PrecisionScope rounding(requested_gemm_precision(cfg_.precision));
    auto run = [&](auto layout) {
      constexpr Layout kLayout = decltype(layout)::value;
      if (dlogits_scale == 1.0) return network_.template gradients<kLayout>(batch, ws_, sink);
      network_.template forward<kLayout>(batch, ws_);
      const double value = network_.template loss<kLayout>(batch, ws_);
      if (!std::isfinite(value)) return value;
      const T factor = static_cast<T>(dlogits_scale);
      T* dlogits = ws_.grad[0];  // (B, n_L) or (n_L, B): elementwise either way
      for (index_t i = 0, n = batch.rows * cfg_.shape.sizes.back(); i < n; ++i)
        dlogits[i] *= factor;
      network_.template backward<kLayout>(batch, ws_, sink);
      return value;
    };
    loss = layout_ == Layout::rows
               ? run(std::integral_constant<Layout, Layout::rows>{})
               : run(std::integral_constant<Layout, Layout::features>{});
  }
  if (parallel && regions.regions > 0 &&
      !record_parallel_run(regions.task_cpu_seconds, regions.wall_seconds)) {
    fell_back_this_epoch_ = true;
    result->fell_back = true;
    result->wall_to_cpu = regions.wall_seconds / std::max(regions.task_cpu_seconds, 1e-9);
  }
  return loss;
}

template <class T>
StepGradient Trainer<T>::gradient_step(const Data& data, index_t batch_size, T* grad,
                                       double scale) {
  if (cfg_.sparse_input)
    throw std::invalid_argument("gradient_step takes dense input (sparse input trains with run)");
  StepGradient out;
  if (next_sample_ >= n_samples_) return out;
  const std::vector<index_t>& n = cfg_.shape.sizes;
  const index_t rows = std::min({batch_size, max_batch_, n_samples_ - next_sample_});
  const Batch<T> batch = gather(data, next_sample_, rows);
  for (index_t l = 0; l < n_layers_; ++l) {
    T* layer_start = grad + gradient_offsets_[static_cast<std::size_t>(l)];
    flat_sink_.grad_W[static_cast<std::size_t>(l)] = layer_start;
    flat_sink_.grad_b[static_cast<std::size_t>(l)] = layer_start + n[l + 1] * n[l];
  }
  if (cfg_.alpha != 0.0) out.squares = weight_squares();  // before the step, as run()'s
  StepsResult guard;
  out.loss = network_gradients(batch, flat_sink_, &guard, scale);
  out.fell_back = guard.fell_back;
  out.rows = rows;
  out.weight_sum = static_cast<double>(rows);
  if (batch.weights) {
    out.weight_sum = 0.0;
    for (index_t r = 0; r < rows; ++r) out.weight_sum += static_cast<double>(batch.weights[r]);
  }
  next_sample_ += rows;
  return out;
}

template <class T>
bool Trainer<T>::apply_gradients(T* grad, index_t penalty_rows) {
  if (cfg_.sparse_input)
    throw std::invalid_argument("apply_gradients needs dense input's parameter layout");
  const std::vector<index_t>& n = cfg_.shape.sizes;
  optimizer_.begin_step();
  squares_unit_ = 0.0;  // no running Σw² here: gradient_step sums it when alpha ≠ 0
  bool finite = true;
  // One block per parameter array, through the same rule (and backup) as the fused path.
  for (index_t l = 0; l < n_layers_; ++l) {
    T* layer_grad = grad + gradient_offsets_[static_cast<std::size_t>(l)];
    const index_t w_size = n[l + 1] * n[l], b_size = n[l + 1];
    finite &= update_block(static_cast<int>(l), 0, w_size, layer_grad, w_size, 1, w_size,
                           penalty_rows);
    finite &= update_block(static_cast<int>(n_layers_ + l), 0, b_size, layer_grad + w_size,
                           b_size, 1, b_size, penalty_rows);
  }
  if (!finite) {
    restore_parameters();
    return false;
  }
  optimizer_.end_step();
  return true;
}

namespace {
// apply_gradient_sum's chunk: 16,384 values (64 KB in float32) stay in L2 between the sum
// and the optimizer's pass over them (4,096 measured slower: more calls into the rule).
constexpr index_t kSumChunk = 16384;
}  // namespace

template <class T>
template <class Visit>
void Trainer<T>::for_each_flat_piece(index_t begin, index_t end, Visit&& visit) const {
  const std::vector<index_t>& n = cfg_.shape.sizes;
  for (index_t l = 0; l < n_layers_; ++l) {
    const index_t w_flat = gradient_offsets_[static_cast<std::size_t>(l)];
    const index_t w_size = n[l + 1] * n[l], b_size = n[l + 1];
    // (array, its first element's place in the flat layout, its size)
    const std::array<std::array<index_t, 3>, 2> arrays{{{l, w_flat, w_size},
                                                        {n_layers_ + l, w_flat + w_size, b_size}}};
    for (const auto& [i, flat, size] : arrays) {
      const index_t first = std::max(begin, flat), last = std::min(end, flat + size);
      if (first < last) visit(static_cast<int>(i), first - flat, first, last - first);
    }
  }
}

template <class T>
bool Trainer<T>::apply_gradient_sum(const std::vector<const T*>& grads,
                                    const std::vector<T>& coefficients, index_t begin,
                                    index_t end, index_t penalty_rows) {
  if (cfg_.sparse_input)
    throw std::invalid_argument("apply_gradient_sum needs dense input's parameter layout");
  if (grads.empty() || grads.size() != coefficients.size() || begin < 0 || begin > end ||
      end > n_parameters_)
    throw std::invalid_argument("apply_gradient_sum: bad sources or range");
  optimizer_.begin_step();
  squares_unit_ = 0.0;  // no running Σw² here: gradient_step sums it when alpha ≠ 0
  T* sum = sum_chunk_.reserve(static_cast<std::size_t>(kSumChunk));
  bool finite = true;
  for_each_flat_piece(begin, end, [&](int i, index_t offset, index_t flat, index_t count) {
    for (index_t done = 0; done < count; done += kSumChunk) {
      const index_t m = std::min(kSumChunk, count - done);
      // Σ_s c_s · g_s, sources in order: the same sum on every rank that reads them.
      // (Coefficients of 1, the unweighted case, skip the multiply: the same values.)
      const T* g = grads[0] + flat + done;
      const T c = coefficients[0];
      if (c == T(1))
        std::copy_n(g, m, sum);
      else
        for (index_t k = 0; k < m; ++k) sum[k] = c * g[k];
      for (std::size_t s = 1; s < grads.size(); ++s) {
        const T* gs = grads[s] + flat + done;
        const T cs = coefficients[s];
        if (cs == T(1))
          for (index_t k = 0; k < m; ++k) sum[k] += gs[k];
        else
          for (index_t k = 0; k < m; ++k) sum[k] += cs * gs[k];
      }
      finite &= update_block(i, offset + done, m, sum, m, 1, m, penalty_rows);
    }
  });
  return finite;
}

template <class T>
void Trainer<T>::finish_gradient_sum(bool keep, index_t begin, index_t end) {
  if (keep) {
    optimizer_.end_step();
    return;
  }
  // Put back what apply_gradient_sum changed (update_block saved it in backup_).
  for_each_flat_piece(begin, end, [&](int i, index_t offset, index_t, index_t count) {
    const bool is_weight = i < n_layers_;
    const index_t layer = is_weight ? i : i - n_layers_;
    const index_t skip = is_weight ? 0 : cfg_.shape.sizes[layer + 1] * cfg_.shape.sizes[layer];
    std::copy_n(backup_weights_[layer] + skip + offset, count, param_array(i) + offset);
  });
}

template <class T>
void Trainer<T>::get_flat_parameters(T* flat, index_t begin, index_t end) const {
  for_each_flat_piece(begin, end, [&](int i, index_t offset, index_t at, index_t count) {
    std::copy_n(param_array(i) + offset, count, flat + at);
  });
}

template <class T>
void Trainer<T>::set_flat_parameters(const T* flat, index_t begin, index_t end) {
  for_each_flat_piece(begin, end, [&](int i, index_t offset, index_t at, index_t count) {
    std::copy_n(flat + at, count, param_array(i) + offset);
  });
}

template <class T>
void Trainer<T>::restore_parameters() {
  const T* in = backup_;
  for (index_t l = 0; l < n_layers_; ++l) {
    const index_t w_size = cfg_.shape.sizes[l + 1] * cfg_.shape.sizes[l];
    const index_t b_size = cfg_.shape.sizes[l + 1];
    if (l == 0 && cfg_.sparse_input && touched_only_) {
      // Only the touched rows of W_0ᵀ were updated, and backed up compactly (row t: column t).
      const index_t n_out = cfg_.shape.sizes[1];
      const T* saved = touched_backup_.reserve(0);
      for (index_t t = 0; t < touched_.count(); ++t)
        std::copy_n(saved + t * n_out, n_out,
                    w0t_ + static_cast<index_t>(touched_.column(t)) * n_out);
    } else {
      std::copy_n(in, w_size, param_array(static_cast<int>(l)));
    }
    in += w_size;
    std::copy_n(in, b_size, biases_[l]);
    in += b_size;
  }
}

template <class T>
bool Trainer<T>::update_block(int i, index_t offset, index_t ld, T* grad, index_t ld_grad,
                              index_t m, index_t n, index_t batch_rows, T* backup_at) {
  // Parameter array i: weights[i] for i < L, else biases[i - L]; its optimizer state and its
  // place in backup_ have the same layout, so one offset finds the block in all of them.
  const bool is_weight = i < n_layers_;
  const index_t layer = is_weight ? i : i - n_layers_;
  const std::vector<index_t>& sizes = cfg_.shape.sizes;
  T* param = param_array(i) + offset;
  T* backup = backup_at ? backup_at
                       : backup_weights_[layer] + (is_weight ? 0 : sizes[layer + 1] * sizes[layer]) +
                             offset;
  if (is_weight && unsaved_step_ && !backup_at) backup = nullptr;  // proven finite
  const bool penalised = is_weight && cfg_.alpha != 0.0;
  if (penalised)  // + alpha · W / rows, from W before this update
    add_l2_gradient(grad, ld_grad, param, ld, m, n,
                    static_cast<T>(cfg_.alpha / static_cast<double>(batch_rows)));
  ParamBlock<T> block = optimizer_.block(i, offset, param, ld, grad, ld_grad, m, n, backup);
  if (i == 0 && w0t_)  // W_0ᵀ's state is the working copy's, in the same layout
    for (int k = 0; k < synced_states_; ++k)
      block.state[static_cast<std::size_t>(k)] = state_t_[static_cast<std::size_t>(k)] + offset;
  const bool finite = optimizer_.update(block);
  if (penalised && squares_unit_ != 0.0) {
    // This block's new Σw², read back while it is in L1, in fixed-point units (trainer.h).
    const double units = sum_of_squares(param, ld, m, n) / squares_unit_;
    // Each block adds at most 2^62, so the sum cannot wrap without first passing through
    // [2^63, 2^64), where some add sees it.
    bool overflow = !(units <= kSquaresLimit);  // (also NaN)
    if (!overflow) {
      const auto add = static_cast<std::uint64_t>(units + 0.5);
      overflow = new_squares_.fetch_add(add, std::memory_order_relaxed) + add >= (1ull << 63);
    }
    if (overflow) squares_overflow_.store(true, std::memory_order_relaxed);
  }
  return finite;
}

template <class T>
void Trainer<T>::consume_sparse_gradient(void* trainer, const SparseRows<T>& x, index_t B,
                                         const T* grad_a) {
  Trainer& t = *static_cast<Trainer*>(trainer);
  const index_t n_in = t.cfg_.shape.sizes[0], n_out = t.cfg_.shape.sizes[1];
  TouchedColumns<T>& touched = t.touched_;
  touched.collect(x, B);
  // Row c of W_0ᵀ (n_out values at c · n_out), its gradient in `gradient` (n_out): touched
  // rows get Σ v · grad_a[r, :] over their non-zeros; zero elsewhere.
  // Touched-only updates back the rows up into a compact (count, n_out) block, reused step
  // after step and so in cache, rather than at their places in backup_ (64 MB for a 65,536 ×
  // 256 layer, each row a cache miss).
  T* compact_backup = t.touched_only_ ? t.touched_backup_.reserve(static_cast<std::size_t>(
                                            std::max<index_t>(touched.count(), 1) * n_out))
                                      : nullptr;
  auto update_row = [&](index_t c, index_t slot, T* gradient) {
    if (slot >= 0)
      touched.gradient_row(gradient, slot, grad_a, n_out);
    else
      std::fill_n(gradient, n_out, T(0));
    return t.update_block(0, c * n_out, n_out, gradient, n_out, 1, n_out, B,
                          compact_backup ? compact_backup + slot * n_out : nullptr);
  };
  // Work per row: the gradient's multiply-adds and the rule's ~10 operations per element.
  const index_t rows = t.touched_only_ ? touched.count() : n_in;
  const double flops = 2.0 * static_cast<double>(x.nnz(B)) * static_cast<double>(n_out) +
                       10.0 * static_cast<double>(rows) * static_cast<double>(n_out);
  const int tasks = static_cast<int>(
      std::min<index_t>(sparse_tasks(sparse_split_pays<T>(flops)), std::max<index_t>(rows, 1)));
  T* scratch = t.gradient_rows_.reserve(static_cast<std::size_t>(tasks * n_out));
  const bool penalised = t.cfg_.alpha != 0.0;
  // Fixed ranges of rows per task: which thread runs a task never changes a result.
  auto task = [&](int i) {
    T* gradient = scratch + i * n_out;
    const index_t begin = rows * i / tasks, end = rows * (i + 1) / tasks;
    bool finite = true;
    if (t.touched_only_) {
      for (index_t s = begin; s < end; ++s) {
#if defined(__GNUC__)
        // The touched rows are scattered over W_0ᵀ: ask for the row after next now.
        if (s + 2 < end) {
          const T* ahead = t.w0t_ + static_cast<index_t>(touched.column(s + 2)) * n_out;
          for (index_t j = 0; j < n_out; j += 64 / static_cast<index_t>(sizeof(T)))
            __builtin_prefetch(ahead + j, 1);
        }
#endif
        finite &= update_row(touched.column(s), s, gradient);
      }
    } else {
      for (index_t c = begin; c < end;) {
        const index_t slot = touched.slot_of(c);
        if (slot >= 0 || penalised) {  // (the penalty's gradient is added to `gradient`)
          finite &= update_row(c, slot, gradient);
          ++c;
          continue;
        }
        // A run of untouched rows: one block, its gradient the zero row repeated (ld 0).
        index_t run_end = c + 1;
        while (run_end < end && touched.slot_of(run_end) < 0) ++run_end;
        finite &= t.update_block(0, c * n_out, n_out, t.zeros_, 0, run_end - c,
                                 n_out, B);
        c = run_end;
      }
    }
    if (!finite) t.weights_finite_.store(false, std::memory_order_relaxed);
  };
  if (tasks <= 1)
    task(0);
  else
    parallel_for(tasks, task);
}

template class Trainer<float>;
template class Trainer<double>;

}  // namespace fastmlp
