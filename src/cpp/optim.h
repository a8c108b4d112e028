// Optimizers: one class per update rule (SGD, Adam, AdamW), each owning its hyper-parameters,
// its named state and its step count. update(ParamBlock&) applies the rule to one block of
// one parameter array; the same call serves Optimizer.step from Python (whole arrays) and the
// training engine (tile by tile, from the weight-gradient GEMM: trainer.h).
//
// Legend: P parameter arrays (in the engine: W_0 … W_{L-1}, then b_0 … b_{L-1}); array i has
// numel_i elements, and every state array of it ("momentum_buffer", "exp_avg", …) has the
// same layout, so one offset finds a block in the parameter, its gradient, its state and its
// backup alike. A block is (rows, cols) with row stride ld (ld_grad for the gradient).
//
// The rules are those documented for torch.optim.SGD (dampening 0), torch.optim.Adam (amsgrad
// off) and torch.optim.AdamW, in the same order of operations, so results agree to rounding.
// Hyper-parameters are doubles, rounded to the parameter dtype once per step, as PyTorch does
// when it multiplies a tensor by a Python float.
//
// Adding an optimizer: a class here deriving from OptimizerRule<Itself> with its state names
// and a templated apply(), its begin_step() if it has per-step constants, and one binding line.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace fastmlp {

enum class DType { float32, float64 };
template <class T>
constexpr DType dtype_of() {
  return sizeof(T) == 4 ? DType::float32 : DType::float64;
}

constexpr int kMaxOptimizerState = 2;

// One block of one parameter array, as the rule sees it.
template <class T>
struct ParamBlock {
  T* param = nullptr;  // (rows, cols), row stride ld
  index_t ld = 0;
  const T* grad = nullptr;  // (rows, cols), row stride ld_grad; read only
  index_t ld_grad = 0;
  std::array<T*, kMaxOptimizerState> state{};  // the rule's state arrays, row stride ld
  T* backup = nullptr;  // if set, receives the parameters before the update (same pass)
  index_t rows = 0, cols = 0;
  bool first_update = false;  // this parameter array's first update by this optimizer
};

// The state, step count and learning rate every rule has; the update itself is virtual.
class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual const char* name() const = 0;
  const std::vector<std::string>& state_names() const { return state_names_; }
  // How many of the state arrays the next update reads (SGD without momentum: none), so that
  // the engine prefetches only those.
  virtual int states_read() const { return static_cast<int>(state_names_.size()); }
  // Whether an update with a zero gradient leaves the parameter and its state as they are
  // (the engine then skips the rows sparse input does not touch: trainer.h).
  virtual bool zero_gradient_is_no_op() const { return false; }
  // A bound on |p| after update() of a block with |p| ≤ param_max and |grad| ≤ grad_max (both
  // finite), in either dtype's arithmetic, with the learning rate as it is now; +inf where the
  // rule gives none (its state could hold anything). The engine's finite-update proof
  // (update_bound.h) rests on it.
  virtual double update_bound(double param_max, double grad_max) const;

  // Allocates zeroed state for parameter arrays of these shapes and this dtype, and resets
  // the step count. Throws std::invalid_argument for an empty or negative shape.
  void bind(const std::vector<std::vector<index_t>>& shapes, DType dtype);
  bool bound() const { return !shapes_.empty(); }
  const std::vector<std::vector<index_t>>& shapes() const { return shapes_; }
  DType dtype() const { return dtype_; }
  index_t numel(int param) const { return numel_[static_cast<std::size_t>(param)]; }
  void reset();  // forgets the state and the step count: as newly constructed

  // State array k of parameter array `param` (numel(param) elements of the bound dtype).
  void* state(int param, int k) const {
    return state_[static_cast<std::size_t>(param) * kMaxOptimizerState + k].get();
  }
  template <class T>
  T* state(int param, int k) const {
    return static_cast<T*>(state(param, k));
  }
  bool started(int param) const { return started_[static_cast<std::size_t>(param)] != 0; }
  void set_started(int param, bool started) { started_[static_cast<std::size_t>(param)] = started; }

  // A step: begin_step() (per-step constants for step steps()+1, from the current lr), then
  // update() on every block of every parameter array — concurrently for disjoint blocks —
  // then end_step() once the whole step is kept (the step count advances, every parameter
  // array counts as started).
  virtual void begin_step() {}
  // Updates b.param from b.grad, b.state; returns whether every updated value is finite.
  virtual bool update(ParamBlock<float>& b) const = 0;
  virtual bool update(ParamBlock<double>& b) const = 0;
  void end_step();

  // The block of parameter array `param` at element `offset`, its state pointers filled in.
  template <class T>
  ParamBlock<T> block(int param, index_t offset, T* data, index_t ld, const T* grad,
                      index_t ld_grad, index_t rows, index_t cols, T* backup) const {
    ParamBlock<T> b;
    b.param = data;
    b.ld = ld;
    b.grad = grad;
    b.ld_grad = ld_grad;
    for (int k = 0; k < static_cast<int>(state_names_.size()); ++k)
      b.state[static_cast<std::size_t>(k)] = state<T>(param, k) + offset;
    b.backup = backup;
    b.rows = rows;
    b.cols = cols;
    b.first_update = !started(param);
    return b;
  }

  double lr = 0.0;
  std::int64_t steps = 0;  // steps taken (Adam's t before this step)
  // Engines that point into the state right now; bind/reset refuse while it is non-zero.
  int users = 0;

 protected:
  explicit Optimizer(std::vector<std::string> state_names);

 private:
  std::vector<std::string> state_names_;
  std::vector<std::vector<index_t>> shapes_;
  std::vector<index_t> numel_;
  DType dtype_ = DType::float32;
  struct Free {
    void operator()(void* p) const;
  };
  std::vector<std::unique_ptr<void, Free>> state_;  // P × kMaxOptimizerState, 64-byte aligned
  std::vector<char> started_;
};

// The two virtual updates of a rule, forwarded to its templated apply<T>() (CRTP).
template <class Rule>
class OptimizerRule : public Optimizer {
 public:
  bool update(ParamBlock<float>& b) const final {
    return static_cast<const Rule&>(*this).template apply<float>(b);
  }
  bool update(ParamBlock<double>& b) const final {
    return static_cast<const Rule&>(*this).template apply<double>(b);
  }

 protected:
  using Optimizer::Optimizer;
};

// g = grad + weight_decay·p
// momentum ≠ 0:  buf = g on the first update, else buf = momentum·buf + g
//                g = nesterov ? g + momentum·buf : buf
// p -= lr·g
class Sgd final : public OptimizerRule<Sgd> {
 public:
  Sgd(double lr, double momentum, double weight_decay, bool nesterov);
  const char* name() const override { return "SGD"; }
  int states_read() const override { return momentum != 0.0 ? 1 : 0; }
  bool zero_gradient_is_no_op() const override { return momentum == 0.0 && weight_decay == 0.0; }
  double update_bound(double param_max, double grad_max) const override;
  template <class T>
  bool apply(ParamBlock<T>& b) const;

  double momentum, weight_decay;
  bool nesterov;
};

// Adam's per-step constants in T (two pow calls a step, not one per block).
template <class T>
struct AdamCoefficients {
  T step_size, bc2_sqrt, one_minus_b1, b2, one_minus_b2, eps, weight_decay, decay_factor;
};

// Adam (decoupled = false):   g = grad + weight_decay·p
// AdamW (decoupled = true):   p = p·(1 - lr·weight_decay), g = grad
// then m = m + (1-β1)(g - m);  v = β2 v + (1-β2) g²
//      p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)        (t = step, from 1)
class Adam : public OptimizerRule<Adam> {
 public:
  Adam(double lr, double beta1, double beta2, double eps, double weight_decay);
  const char* name() const override { return "Adam"; }
  void begin_step() override;
  template <class T>
  bool apply(ParamBlock<T>& b) const;

  double beta1, beta2, eps, weight_decay;

 protected:
  bool decoupled_ = false;

 private:
  AdamCoefficients<float> coefficients_f_{};
  AdamCoefficients<double> coefficients_d_{};
};

class AdamW final : public Adam {
 public:
  AdamW(double lr, double beta1, double beta2, double eps, double weight_decay);
  const char* name() const override { return "AdamW"; }
};

}  // namespace fastmlp
