// Optimizers (see optim.h).
#include "optim.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <type_traits>

#include "gemm/context.h"
#include "gemm/sgd_row.h"

namespace fastmlp {

namespace {
// Whether |v| is finite, as an integer flag the compiler can OR-reduce in vector registers.
template <class T>
inline unsigned not_finite(T v) {
  return !(std::fabs(v) <= std::numeric_limits<T>::max());
}

// Calls f(std::integral_constant<bool, flag>{}, ...) with each runtime flag turned into a
// compile-time one.
template <class F>
auto with_flags(F&& f) {
  return f();
}
template <class F, class... Flags>
auto with_flags(F&& f, bool flag, Flags... rest) {
  return flag ? with_flags([&](auto... known) { return f(std::true_type{}, known...); }, rest...)
              : with_flags([&](auto... known) { return f(std::false_type{}, known...); }, rest...);
}
}  // namespace

// ---- state ---------------------------------------------------------------------------------

Optimizer::Optimizer(std::vector<std::string> state_names) : state_names_(std::move(state_names)) {}
Optimizer::~Optimizer() = default;

// State is zeroed by calloc, which hands large blocks out as fresh pages that the kernel zeroes
// on first touch: state a rule never reads (SGD's momentum buffer without momentum; a sparse
// first layer's, 64 MB for 65,536 × 256) costs no memory and no time. calloc aligns to 16
// bytes, so the block is over-allocated, aligned to 64 by hand, and the pointer calloc gave
// is kept just before the aligned one for free().
void Optimizer::Free::operator()(void* p) const {
  if (p) std::free(static_cast<void**>(p)[-1]);
}

void Optimizer::bind(const std::vector<std::vector<index_t>>& shapes, DType dtype) {
  if (users > 0) throw std::logic_error("the optimizer is in use by a training engine");
  if (shapes.empty()) throw std::invalid_argument("an optimizer needs at least one parameter");
  const std::size_t item = dtype == DType::float32 ? 4 : 8;
  std::vector<index_t> numel;
  for (const auto& shape : shapes) {
    index_t n = 1;
    for (const index_t d : shape) {
      if (d < 0) throw std::invalid_argument("a parameter shape has a negative dimension");
      if (d != 0 && n > std::numeric_limits<index_t>::max() / static_cast<index_t>(item) / d)
        throw std::invalid_argument("a parameter is larger than any memory");
      n *= d;
    }
    numel.push_back(n);
  }
  std::vector<std::unique_ptr<void, Free>> state;
  for (const index_t n : numel)
    for (int k = 0; k < kMaxOptimizerState; ++k) {
      if (k >= static_cast<int>(state_names_.size())) {
        state.emplace_back(nullptr);
        continue;
      }
      // 64-byte aligned and zeroed; at least one line, so an empty parameter has a pointer.
      const std::size_t bytes = (static_cast<std::size_t>(n) * item + 63) / 64 * 64 + 64;
      void* raw = std::calloc(1, bytes + 64 + sizeof(void*));
      if (!raw) throw std::bad_alloc();
      const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(raw) + sizeof(void*);
      void* p = reinterpret_cast<void*>((first + 63) / 64 * 64);
      static_cast<void**>(p)[-1] = raw;
      state.emplace_back(p);
    }
  shapes_ = shapes;
  numel_ = std::move(numel);
  dtype_ = dtype;
  state_ = std::move(state);
  started_.assign(shapes.size(), 0);
  steps = 0;
}

void Optimizer::reset() {
  if (users > 0) throw std::logic_error("the optimizer is in use by a training engine");
  shapes_.clear();
  numel_.clear();
  state_.clear();
  started_.clear();
  steps = 0;
}

double Optimizer::update_bound(double, double) const {
  return std::numeric_limits<double>::infinity();
}

void Optimizer::end_step() {
  steps += 1;
  std::fill(started_.begin(), started_.end(), 1);
}

// ---- SGD -----------------------------------------------------------------------------------

Sgd::Sgd(double lr_, double momentum_, double weight_decay_, bool nesterov_)
    : OptimizerRule({"momentum_buffer"}), momentum(momentum_), weight_decay(weight_decay_),
      nesterov(nesterov_) {
  lr = lr_;
}

// Without momentum: g = grad + wd·p, p - lr·g, each operation rounded once in the dtype
// (relative error ≤ float32's epsilon, also float64's bound), lr and wd rounded to it too.
double Sgd::update_bound(double param_max, double grad_max) const {
  if (momentum != 0.0) return std::numeric_limits<double>::infinity();
  const double rounding = 1 + 4 * static_cast<double>(std::numeric_limits<float>::epsilon());
  const double g = (grad_max + std::fabs(weight_decay) * rounding * param_max) * rounding;
  return (param_max + std::fabs(lr) * rounding * g) * rounding;  // NaN lr: NaN, never a bound
}

template <class T>
bool Sgd::apply(ParamBlock<T>& b) const {
  const T lr_t = static_cast<T>(lr), mu = static_cast<T>(momentum),
          wd = static_cast<T>(weight_decay);
  const bool use_momentum = momentum != 0.0;
  // Without momentum, the active ISA's row kernel if it has one: the same operations, wider
  // vectors.
  const SgdRowKernel<T> row_kernel = use_momentum ? nullptr : active_gemm_context<T>().sgd_row;
  if (row_kernel) {
    unsigned row_bad = 0;
    for (index_t r = 0; r < b.rows; ++r)
      row_bad |= row_kernel(b.param + r * b.ld, b.grad + r * b.ld_grad,
                            b.backup ? b.backup + r * b.ld : nullptr, b.cols, lr_t, wd,
                            weight_decay != 0.0);
    return row_bad == 0;
  }
  const unsigned bad = with_flags(
      [&](auto has_backup, auto decay, auto use_mu, auto nest, auto first) {
        unsigned block_bad = 0;
        for (index_t r = 0; r < b.rows; ++r)
          block_bad |= sgd_loop<T, has_backup, decay, use_mu, use_mu && nest, use_mu && first>(
              b.param + r * b.ld, b.grad + r * b.ld_grad, use_mu ? b.state[0] + r * b.ld : nullptr,
              has_backup ? b.backup + r * b.ld : nullptr, b.cols, lr_t, mu, wd);
        return block_bad;
      },
      b.backup != nullptr, weight_decay != 0.0, use_momentum, nesterov, b.first_update);
  return bad == 0;
}

// ---- Adam, AdamW ---------------------------------------------------------------------------

Adam::Adam(double lr_, double beta1_, double beta2_, double eps_, double weight_decay_)
    : OptimizerRule({"exp_avg", "exp_avg_sq"}), beta1(beta1_), beta2(beta2_), eps(eps_),
      weight_decay(weight_decay_) {
  lr = lr_;
}

AdamW::AdamW(double lr_, double beta1_, double beta2_, double eps_, double weight_decay_)
    : Adam(lr_, beta1_, beta2_, eps_, weight_decay_) {
  decoupled_ = true;
}

template <class T>
AdamCoefficients<T> adam_coefficients(double lr, double beta1, double beta2, double eps,
                                      double weight_decay, bool decoupled, std::int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamCoefficients<T> c;
  c.step_size = static_cast<T>(lr / bias_correction1);
  c.bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  c.one_minus_b1 = static_cast<T>(1.0 - beta1);
  c.b2 = static_cast<T>(beta2);
  c.one_minus_b2 = static_cast<T>(1.0 - beta2);
  c.eps = static_cast<T>(eps);
  c.weight_decay = decoupled ? T(0) : static_cast<T>(weight_decay);
  // torch.optim.AdamW: param.mul_(1 - lr * weight_decay), the factor computed in double.
  c.decay_factor = decoupled ? static_cast<T>(1.0 - lr * weight_decay) : T(1);
  return c;
}

void Adam::begin_step() {
  coefficients_f_ =
      adam_coefficients<float>(lr, beta1, beta2, eps, weight_decay, decoupled_, steps + 1);
  coefficients_d_ =
      adam_coefficients<double>(lr, beta1, beta2, eps, weight_decay, decoupled_, steps + 1);
}

template <class T, bool kBackup, bool kDecay, bool kDecoupled>
unsigned adam_loop(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ exp_avg,
                   T* __restrict__ exp_avg_sq, T* __restrict__ backup, index_t n,
                   const AdamCoefficients<T> c) {
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    T p = param[i];
    if (kBackup) backup[i] = p;
    if (kDecoupled) p = p * c.decay_factor;
    T g = grad[i];
    if (kDecay) g = g + c.weight_decay * p;
    const T m = exp_avg[i] + c.one_minus_b1 * (g - exp_avg[i]);
    const T v = c.b2 * exp_avg_sq[i] + c.one_minus_b2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const T updated = p - c.step_size * (m / (std::sqrt(v) / c.bc2_sqrt + c.eps));
    bad |= not_finite(updated);
    param[i] = updated;
  }
  return bad;
}

template <class T>
bool Adam::apply(ParamBlock<T>& b) const {
  const AdamCoefficients<T>& c = [this]() -> const AdamCoefficients<T>& {
    if constexpr (std::is_same_v<T, float>) return coefficients_f_;
    else return coefficients_d_;
  }();
  const bool decoupled_decay = decoupled_ && weight_decay != 0.0;
  const bool coupled_decay = !decoupled_ && weight_decay != 0.0;
  const unsigned bad = with_flags(
      [&](auto has_backup, auto decay, auto decoupled) {
        unsigned block_bad = 0;
        for (index_t r = 0; r < b.rows; ++r)
          block_bad |= adam_loop<T, has_backup, decay, decoupled>(
              b.param + r * b.ld, b.grad + r * b.ld_grad, b.state[0] + r * b.ld,
              b.state[1] + r * b.ld, has_backup ? b.backup + r * b.ld : nullptr, b.cols, c);
        return block_bad;
      },
      b.backup != nullptr, coupled_decay, decoupled_decay);
  return bad == 0;
}

template bool Sgd::apply<float>(ParamBlock<float>&) const;
template bool Sgd::apply<double>(ParamBlock<double>&) const;
template bool Adam::apply<float>(ParamBlock<float>&) const;
template bool Adam::apply<double>(ParamBlock<double>&) const;

}  // namespace fastmlp
