// The fused training engine (see trainer.h).
#include "trainer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "activations.h"
#include "dense.h"
#include "loss.h"
#include "narrow.h"
#include "optim.h"

namespace fastmlp {

namespace {

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

// Σ w[i]² in double. Eight independent partial sums, so that the loop runs at the adders'
// throughput (and vectorises) instead of one add's latency per element: the single running
// sum this replaces cost ~10 µs a step on the 9.5k weights of scikit-learn's default digits
// net, 16 % of the estimator's fit.
template <class T>
double sum_of_squares(const T* w, index_t n) {
  double partial[8] = {};
  index_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) partial[j] += static_cast<double>(w[i + j]) * w[i + j];
  double total = 0.0;
  for (; i < n; ++i) total += static_cast<double>(w[i]) * w[i];
  for (const double p : partial) total += p;
  return total;
}

}  // namespace

void shuffled_indices(std::int64_t* out, index_t n, std::uint64_t seed) {
  for (index_t i = 0; i < n; ++i) out[i] = i;
  std::uint64_t state = seed;
  for (index_t i = n - 1; i > 0; --i) {
    const index_t j = static_cast<index_t>(bounded(state, static_cast<std::uint64_t>(i + 1)));
    std::swap(out[i], out[j]);
  }
}

template <class T>
Trainer<T>::Trainer(TrainerConfig config, TrainerParameters<T> params, index_t max_batch)
    : cfg_(std::move(config)), params_(std::move(params)), max_batch_(max_batch) {
  n_layers_ = static_cast<index_t>(cfg_.sizes.size()) - 1;
  const index_t widest = *std::max_element(cfg_.sizes.begin() + 1, cfg_.sizes.end());
  narrow_ = use_narrow_path(cfg_.sizes, max_batch_);
  // One block for every float buffer; each piece rounded to 16 elements (64 bytes).
  auto rounded = [](index_t n) { return (n + 15) / 16 * 16; };
  index_t total = 2 * rounded(max_batch_ * widest) + rounded(max_batch_ * cfg_.sizes[0]) +
                  rounded(max_batch_ * cfg_.sizes.back()) + rounded(max_batch_);
  index_t n_parameters = 0;
  for (index_t l = 0; l < n_layers_; ++l) {
    total += rounded(max_batch_ * cfg_.sizes[l + 1]) + rounded(cfg_.sizes[l + 1]);
    if (narrow_) total += rounded(cfg_.sizes[l + 1] * cfg_.sizes[l]);
    n_parameters += cfg_.sizes[l + 1] * (cfg_.sizes[l] + 1);
  }
  total += rounded(n_parameters);
  if (narrow_) total += rounded(max_batch_ * cfg_.sizes.back());
  T* p = block_.reserve(static_cast<std::size_t>(total));
  auto carve = [&](index_t n) {
    T* piece = p;
    p += rounded(n);
    return piece;
  };
  grad_[0] = carve(max_batch_ * widest);
  grad_[1] = carve(max_batch_ * widest);
  x_batch_ = carve(max_batch_ * cfg_.sizes[0]);
  targets_batch_ = carve(max_batch_ * cfg_.sizes.back());
  weights_batch_ = carve(max_batch_);
  backup_ = carve(n_parameters);
  // backup_ holds, per layer, W_l then b_l.
  for (index_t l = 0, offset = 0; l < n_layers_; ++l) {
    backup_weights_.push_back(backup_ + offset);
    offset += cfg_.sizes[l + 1] * (cfg_.sizes[l] + 1);
  }
  for (index_t l = 0; l < n_layers_; ++l) {
    act_.push_back(carve(max_batch_ * cfg_.sizes[l + 1]));
    // Weight gradients are stored only on the feature-major path; the GEMM path consumes
    // them tile by tile.
    grad_W_.push_back(narrow_ ? carve(cfg_.sizes[l + 1] * cfg_.sizes[l]) : nullptr);
    grad_b_.push_back(carve(cfg_.sizes[l + 1]));
  }
  if (narrow_) logits_rows_ = carve(max_batch_ * cfg_.sizes.back());
  y_batch_ = labels_block_.reserve(static_cast<std::size_t>(max_batch_));
}

template <class T>
void Trainer<T>::begin_epoch(index_t n_samples, bool shuffle, std::uint64_t seed) {
  n_samples_ = n_samples;
  next_sample_ = 0;
  shuffled_ = shuffle;
  fell_back_this_epoch_ = false;
  if (shuffle) {
    order_.resize(static_cast<std::size_t>(n_samples));  // allocates on the first epoch only
    shuffled_indices(order_.data(), n_samples, seed);
  }
}

template <class T>
StepsResult Trainer<T>::run(const Data& data, index_t batch_size, index_t max_steps) {
  StepsResult result;
  batch_size = std::min(batch_size, max_batch_);
  while (result.steps < max_steps && next_sample_ < n_samples_) {
    const index_t rows = std::min(batch_size, n_samples_ - next_sample_);
    bool nonfinite = false;
    const double loss = step(data, next_sample_, rows, &nonfinite, &result);
    if (nonfinite) {
      result.nonfinite = true;
      result.loss_sum = loss;
      return result;
    }
    result.loss_sum += loss * static_cast<double>(rows);
    result.samples += rows;
    result.steps += 1;
    next_sample_ += rows;
  }
  result.epoch_done = next_sample_ >= n_samples_;
  return result;
}

template <class T>
typename Trainer<T>::Batch Trainer<T>::gather(const Data& data, index_t first, index_t rows) {
  const std::vector<index_t>& n = cfg_.sizes;
  const index_t n_logits = n.back();
  Batch batch;
  batch.rows = rows;
  // Consecutive rows are read in place; shuffled rows are gathered. The feature-major path
  // always copies X, transposed, into x_batch_ (n_0, rows).
  const std::int64_t* order = shuffled_ ? order_.data() + first : nullptr;
  auto row = [&](index_t r) { return order ? order[r] : first + r; };
  batch.x = data.X + first * data.ldx;
  batch.ld_x = data.ldx;
  if (narrow_) {
    for (index_t r = 0; r < rows; ++r) {
      const T* x_row = data.X + row(r) * data.ldx;
      for (index_t p = 0; p < n[0]; ++p) x_batch_[p * rows + r] = x_row[p];
    }
    batch.x = x_batch_;
  } else if (order) {
    for (index_t r = 0; r < rows; ++r)
      std::copy_n(data.X + order[r] * data.ldx, n[0], x_batch_ + r * n[0]);
    batch.x = x_batch_;
    batch.ld_x = n[0];
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
double Trainer<T>::batch_loss(T* dlogits, const T* logits, const Batch& batch) {
  const index_t rows = batch.rows, n_logits = cfg_.sizes.back();
  double loss = 0.0;
  switch (cfg_.output) {
    case OutputKind::softmax:
      loss = softmax_nll(dlogits, logits, batch.labels, batch.weights, rows, n_logits);
      break;
    case OutputKind::sigmoid:
      loss = sigmoid_bce(dlogits, logits, batch.labels, batch.weights, rows);
      break;
    case OutputKind::identity:
      loss = squared_error(dlogits, logits, batch.targets, batch.weights, rows, n_logits);
      break;
  }
  if (cfg_.alpha != 0.0) {
    double squares = 0.0;
    for (index_t l = 0; l < n_layers_; ++l)
      squares += sum_of_squares(params_.weights[l], cfg_.sizes[l + 1] * cfg_.sizes[l]);
    loss += 0.5 * cfg_.alpha * squares / static_cast<double>(rows);
  }
  return loss;
}

template <class T>
double Trainer<T>::gemm_gradients(const Batch& batch) {
  const std::vector<index_t>& n = cfg_.sizes;
  const index_t rows = batch.rows;
  // Forward: act[l] = act(in Wᵀ + b), bias and ReLU in the GEMM write-back.
  auto layer_mode = [&](index_t l) {
    return parallel_step_ ? layer_mode_[l] : ParallelMode::serial;
  };
  for (index_t l = 0; l < n_layers_; ++l) {
    const ParallelScope threads(layer_mode(l));
    const bool hidden = l < n_layers_ - 1;
    const StridedMatrix<T> in = l == 0 ? StridedMatrix<T>{batch.x, batch.ld_x, 1}
                                       : StridedMatrix<T>{act_[l - 1], n[l], 1};
    dense_forward(act_[l], in, StridedMatrix<T>{params_.weights[l], n[l], 1}, params_.biases[l],
                  rows, n[l], n[l + 1],
                  hidden ? cfg_.hidden : Activation::identity);
  }

  // Loss, and its gradient w.r.t. the logits written straight into the first gradient buffer.
  T* grad_out = grad_[0];
  const double loss = batch_loss(grad_out, act_[n_layers_ - 1], batch);
  if (!std::isfinite(loss)) return loss;

  // Backward, last layer first. grad_out = dL/d(layer output); the ReLU of hidden layer l was
  // already folded in by the layer above (mask epilogue), so grad_out is dL/d(pre-activation).
  //
  // W_l is updated inside this loop, tile by tile as the weight-gradient GEMM finishes them
  // (consume_weight_tile): the gradient never goes to memory. So the product that needs the
  // old W_l, the input gradient, runs first. The biases are updated in step().
  weights_finite_.store(true, std::memory_order_relaxed);
  for (index_t l = n_layers_ - 1; l >= 0; --l) {
    const ParallelScope threads(layer_mode(l));
    const index_t n_in = n[l], n_out = n[l + 1];
    const T* in = l == 0 ? batch.x : act_[l - 1];
    const index_t ld_in = l == 0 ? batch.ld_x : n_in;
    bias_gradient(grad_b_[l], grad_out, rows, n_out);  // while grad_out is hot in cache
    T* grad_in = grad_[(n_layers_ - l) % 2];
    if (l > 0) {
      // dL/d(pre-activation of layer l-1) = (grad_out · W_l) · act'(…): for ReLU the mask
      // epilogue of this product, for tanh/logistic one pass after it.
      const bool relu = cfg_.hidden == Activation::relu;
      input_gradient(grad_in, grad_out, StridedMatrix<T>{params_.weights[l], n_in, 1}, rows,
                     n_in, n_out, relu ? act_[l - 1] : nullptr);
      if (cfg_.hidden == Activation::tanh || cfg_.hidden == Activation::logistic)
        activation_backward_inplace(grad_in, act_[l - 1], rows * n_in, cfg_.hidden);
    }
    WeightTileUpdate context{this, l, rows};
    const TileConsumer<T> consumer{&Trainer::consume_weight_tile, &context};
    weight_gradient(static_cast<T*>(nullptr), grad_out, StridedMatrix<T>{in, ld_in, 1}, rows,
                    n_in, n_out, &consumer);
    grad_out = grad_in;
  }
  return loss;
}

template <class T>
void Trainer<T>::consume_weight_tile(void* context, T* grad, index_t ld_grad, index_t row,
                                     index_t col, index_t m, index_t n) {
  const WeightTileUpdate& u = *static_cast<const WeightTileUpdate*>(context);
  Trainer& t = *u.trainer;
  const index_t l = u.layer, n_in = t.cfg_.sizes[l];
  // The tile starts at element row · n_in + col of W_l (n_out, n_in).
  if (!t.update_block(static_cast<int>(l), row * n_in + col, n_in, grad, ld_grad, m, n, u.rows))
    t.weights_finite_.store(false, std::memory_order_relaxed);
#if defined(__GNUC__)
  // The packed GEMM hands over a column panel's tiles top to bottom: ask for the next tile's
  // rows of W, its optimizer state and its backup now, so that they arrive while the kernel
  // computes that tile. (A wide layer's W is larger than L2 and its rows are 4 KiB apart,
  // beyond the reach of the hardware prefetcher: without this the tile-by-tile update of the
  // wide net waited on memory.)
  const index_t next_end = std::min(row + 2 * m, t.cfg_.sizes[l + 1]);
  constexpr index_t kLine = 64 / sizeof(T);
  for (index_t i = row + m; i < next_end; ++i)
    for (index_t j = 0; j < n; j += kLine) {
      const index_t at = i * n_in + col + j;
      __builtin_prefetch(t.params_.weights[l] + at, 1);
      __builtin_prefetch(t.backup_weights_[l] + at, 1);
      if (t.cfg_.adam || t.cfg_.momentum != 0.0) __builtin_prefetch(t.params_.state_a[l] + at, 1);
      if (t.cfg_.adam) __builtin_prefetch(t.params_.state_b[l] + at, 1);
    }
#endif
}

template <class T>
double Trainer<T>::narrow_gradients(const Batch& batch) {
  // The same math as gemm_gradients with every activation and gradient feature-major
  // (n_l, rows): see narrow.h. Only the loss kernels read row-major logits, so the logits are
  // transposed into logits_rows_ (rows, n_L) and their gradient back into grad_[0].
  const std::vector<index_t>& n = cfg_.sizes;
  const index_t rows = batch.rows, n_logits = n.back();
  for (index_t l = 0; l < n_layers_; ++l) {
    const bool hidden = l < n_layers_ - 1;
    narrow_forward(act_[l], l == 0 ? batch.x : act_[l - 1], params_.weights[l],
                   params_.biases[l], rows, n[l], n[l + 1],
                   hidden ? cfg_.hidden : Activation::identity);
  }
  transpose_into(logits_rows_, act_[n_layers_ - 1], n_logits, rows, rows);
  T* dlogits_rows = grad_[1];
  const double loss = batch_loss(dlogits_rows, logits_rows_, batch);
  if (!std::isfinite(loss)) return loss;
  T* grad_out = grad_[0];  // dL/d(pre-activation of layer l), (n_{l+1}, rows)
  transpose_into(grad_out, dlogits_rows, rows, n_logits, n_logits);
  for (index_t l = n_layers_ - 1; l >= 0; --l) {
    const T* in = l == 0 ? batch.x : act_[l - 1];
    narrow_parameter_gradients(grad_W_[l], grad_b_[l], grad_out, in, rows, n[l], n[l + 1]);
    if (l > 0) {
      T* grad_in = grad_[(n_layers_ - l) % 2];
      narrow_input_gradient(grad_in, grad_out, params_.weights[l], rows, n[l], n[l + 1]);
      activation_backward_inplace(grad_in, act_[l - 1], rows * n[l], cfg_.hidden);
      grad_out = grad_in;
    }
  }
  return loss;
}

template <class T>
void Trainer<T>::plan_parallelism(index_t rows) {
  const int threads = get_num_threads();
  if (rows == plan_rows_ && threads == plan_threads_) return;
  plan_rows_ = rows;
  plan_threads_ = threads;
  const std::vector<index_t>& n = cfg_.sizes;
  layer_mode_.assign(static_cast<std::size_t>(n_layers_), ParallelMode::serial);
  any_parallel_layer_ = false;
  if (narrow_ || threads <= 1) return;  // the feature-major path has no GEMM
  for (index_t l = 0; l < n_layers_; ++l) {
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(n[l]) *
                         static_cast<double>(n[l + 1]);
    if (gemm_split_pays<T>(flops)) {
      layer_mode_[l] = ParallelMode::parallel;
      any_parallel_layer_ = true;
    }
  }
}

template <class T>
double Trainer<T>::step(const Data& data, index_t first, index_t rows, bool* nonfinite,
                        StepsResult* result) {
  const std::vector<index_t>& n = cfg_.sizes;
  const Batch batch = gather(data, first, rows);
  if (cfg_.adam)
    adam_ = adam_coefficients<T>(cfg_.lr, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay,
                                 params_.optimizer_steps + 1);
  // The contention guard: a step that uses the pool is measured (RegionStats) and reported
  // to the process's ledger (threads.h); once parallel steps have lost more time than they
  // saved, the rest of the epoch runs on one thread, and no engine in the process tries the
  // pool again before the back-off time.
  // Either way every product is computed the same, so the results do not change.
  plan_parallelism(rows);
  parallel_step_ = any_parallel_layer_ && !fell_back_this_epoch_ && parallel_retry_due();
  RegionStats regions;
  double loss;
  {
    const RegionStatsScope measure(parallel_step_ ? &regions : nullptr);
    loss = narrow_ ? narrow_gradients(batch) : gemm_gradients(batch);
  }
  if (parallel_step_ && regions.regions > 0) {
    result->parallel_steps += 1;
    if (!record_parallel_run(regions.task_cpu_seconds, regions.wall_seconds)) {
      fell_back_this_epoch_ = true;
      result->fell_back = true;
      result->wall_to_cpu = regions.wall_seconds / std::max(regions.task_cpu_seconds, 1e-9);
    }
  }
  if (!std::isfinite(loss)) {
    *nonfinite = true;
    return loss;
  }

  // The update is all or nothing: each parameter's update pass also saves its old values and
  // checks the new ones, and if anything became NaN or infinite (overflowing gradients or an
  // overflowing step) the old values are put back, so the model always keeps its last finite
  // weights at the cost of one extra write per parameter.
  // The GEMM path has updated the weights already, tile by tile (gemm_gradients).
  bool finite = narrow_ || weights_finite_.load(std::memory_order_relaxed);
  for (index_t l = 0; l < n_layers_; ++l) {
    const index_t w_size = n[l + 1] * n[l], b_size = n[l + 1];
    if (narrow_)
      finite &= update_block(static_cast<int>(l), 0, w_size, grad_W_[l], w_size, 1, w_size, rows);
    finite &= update_block(static_cast<int>(n_layers_ + l), 0, b_size, grad_b_[l], b_size, 1,
                           b_size, rows);
  }
  if (!finite) {
    restore_parameters();
    *nonfinite = true;
    return std::numeric_limits<double>::infinity();
  }
  if (cfg_.adam) params_.optimizer_steps += 1;
  std::fill(params_.sgd_first_step.begin(), params_.sgd_first_step.end(), 0);
  return loss;
}

template <class T>
void Trainer<T>::restore_parameters() {
  const T* in = backup_;
  for (index_t l = 0; l < n_layers_; ++l) {
    const index_t w_size = cfg_.sizes[l + 1] * cfg_.sizes[l], b_size = cfg_.sizes[l + 1];
    std::copy_n(in, w_size, params_.weights[l]);
    in += w_size;
    std::copy_n(in, b_size, params_.biases[l]);
    in += b_size;
  }
}

template <class T>
bool Trainer<T>::update_block(int i, index_t offset, index_t ld, T* grad, index_t ld_grad,
                              index_t m, index_t n, index_t batch_rows) {
  // Parameter array i: weights[i] for i < L, else biases[i - L]; its optimizer state and its
  // place in backup_ have the same layout, so one offset finds the block in all of them.
  const bool is_weight = i < n_layers_;
  const index_t layer = is_weight ? i : i - n_layers_;
  T* param = (is_weight ? params_.weights[layer] : params_.biases[layer]) + offset;
  T* backup = backup_weights_[layer] + (is_weight ? 0 : cfg_.sizes[layer + 1] * cfg_.sizes[layer]) +
              offset;
  if (is_weight && cfg_.alpha != 0.0) {  // + alpha · W / rows, from W before this update
    const T scale = static_cast<T>(cfg_.alpha / static_cast<double>(batch_rows));
    for (index_t r = 0; r < m; ++r)
      for (index_t j = 0; j < n; ++j) grad[r * ld_grad + j] += scale * param[r * ld + j];
  }
  T* state_a = params_.state_a[i] + offset;
  if (cfg_.adam)
    return adam_update_block(param, ld, grad, ld_grad, state_a, params_.state_b[i] + offset, m,
                             n, adam_, backup);
  return sgd_update_block(param, ld, grad, ld_grad, state_a, m, n, cfg_.lr, cfg_.momentum,
                          cfg_.weight_decay, cfg_.nesterov, params_.sgd_first_step[i] != 0,
                          backup);
}

template <class T>
void mlp_forward(T* logits, const T* X, index_t rs_x, index_t cs_x, index_t B,
                 const std::vector<index_t>& sizes, const std::vector<const T*>& weights,
                 const std::vector<const T*>& biases, Activation hidden) {
  static thread_local AlignedBuffer<T> ping_pong;
  const index_t n_layers = static_cast<index_t>(sizes.size()) - 1;
  index_t widest = 0;
  for (index_t l = 1; l < n_layers; ++l) widest = std::max(widest, sizes[l]);
  T* buffers = ping_pong.reserve(static_cast<std::size_t>(2 * B * std::max<index_t>(widest, 1)));
  StridedMatrix<T> in{X, rs_x, cs_x};
  for (index_t l = 0; l < n_layers; ++l) {
    const bool last = l == n_layers - 1;
    T* out = last ? logits : buffers + (l % 2) * B * widest;
    dense_forward(out, in, StridedMatrix<T>{weights[l], sizes[l], 1}, biases[l], B, sizes[l],
                  sizes[l + 1], last ? Activation::identity : hidden);
    in = StridedMatrix<T>{out, sizes[l + 1], 1};
  }
}

template class Trainer<float>;
template class Trainer<double>;
template void mlp_forward<float>(float*, const float*, index_t, index_t, index_t,
                                 const std::vector<index_t>&, const std::vector<const float*>&,
                                 const std::vector<const float*>&, Activation);
template void mlp_forward<double>(double*, const double*, index_t, index_t, index_t,
                                  const std::vector<index_t>&, const std::vector<const double*>&,
                                  const std::vector<const double*>&, Activation);

}  // namespace fastmlp
