// Optimizer update rules (see optim.h). Hyper-parameters arrive as double and are rounded to
// the parameter dtype once, as PyTorch does when it multiplies a tensor by a Python float.
#include "optim.h"

#include <cmath>
#include <limits>
#include <type_traits>

namespace fastmlp {

namespace {
// Whether |v| is finite, as an integer flag the compiler can OR-reduce in vector registers.
template <class T>
inline unsigned not_finite(T v) {
  return !(std::fabs(v) <= std::numeric_limits<T>::max());
}
}  // namespace

// The per-element loops are specialised on every flag (template parameters), so each
// compiled loop is branch-free and vectorises; the pointers never alias (restrict). Before
// this the flags were tested per element and the loop ran scalar: a tenth of a digits-sized
// training step went to the SGD update.
template <class T, bool kBackup, bool kDecay, bool kMomentum, bool kNesterov, bool kFirst>
unsigned sgd_loop(T* __restrict__ param, const T* __restrict__ grad,
                  T* __restrict__ momentum_buffer, T* __restrict__ backup, index_t n, T lr, T mu,
                  T wd) {
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const T p = param[i];
    if (kBackup) backup[i] = p;
    T g = grad[i];
    if (kDecay) g = g + wd * p;
    if (kMomentum) {
      const T buf = kFirst ? g : mu * momentum_buffer[i] + g;
      momentum_buffer[i] = buf;
      g = kNesterov ? g + mu * buf : buf;
    }
    const T updated = p - lr * g;
    bad |= not_finite(updated);
    param[i] = updated;
  }
  return bad;
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

template <class T>
bool sgd_update_block(T* param, index_t ld, const T* grad, index_t ld_grad, T* momentum_buffer,
                      index_t rows, index_t cols, double lr, double momentum,
                      double weight_decay, bool nesterov, bool first_step, T* backup) {
  const T lr_t = static_cast<T>(lr), mu = static_cast<T>(momentum),
          wd = static_cast<T>(weight_decay);
  const bool use_momentum = momentum != 0.0;
  const unsigned bad = with_flags(
      [&](auto has_backup, auto decay, auto use_mu, auto nest, auto first) {
        unsigned block_bad = 0;
        for (index_t r = 0; r < rows; ++r)
          block_bad |= sgd_loop<T, has_backup, decay, use_mu, use_mu && nest, use_mu && first>(
              param + r * ld, grad + r * ld_grad, use_mu ? momentum_buffer + r * ld : nullptr,
              has_backup ? backup + r * ld : nullptr, cols, lr_t, mu, wd);
        return block_bad;
      },
      backup != nullptr, weight_decay != 0.0, use_momentum, nesterov, first_step);
  return bad == 0;
}

template <class T>
bool sgd_update(T* param, const T* grad, T* momentum_buffer, index_t n, double lr,
                double momentum, double weight_decay, bool nesterov, bool first_step,
                T* backup) {
  return sgd_update_block(param, n, grad, n, momentum_buffer, 1, n, lr, momentum, weight_decay,
                          nesterov, first_step, backup);
}

template <class T, bool kBackup, bool kDecay>
unsigned adam_loop(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ exp_avg,
                   T* __restrict__ exp_avg_sq, T* __restrict__ backup, index_t n, T step_size,
                   T bc2_sqrt, T one_minus_b1, T b2, T one_minus_b2, T eps, T wd) {
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const T p = param[i];
    if (kBackup) backup[i] = p;
    T g = grad[i];
    if (kDecay) g = g + wd * p;
    const T m = exp_avg[i] + one_minus_b1 * (g - exp_avg[i]);
    const T v = b2 * exp_avg_sq[i] + one_minus_b2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const T updated = p - step_size * (m / (std::sqrt(v) / bc2_sqrt + eps));
    bad |= not_finite(updated);
    param[i] = updated;
  }
  return bad;
}

template <class T>
AdamCoefficients<T> adam_coefficients(double lr, double beta1, double beta2, double eps,
                                      double weight_decay, std::int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamCoefficients<T> c;
  c.step_size = static_cast<T>(lr / bias_correction1);
  c.bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  c.one_minus_b1 = static_cast<T>(1.0 - beta1);
  c.b2 = static_cast<T>(beta2);
  c.one_minus_b2 = static_cast<T>(1.0 - beta2);
  c.eps = static_cast<T>(eps);
  c.weight_decay = static_cast<T>(weight_decay);
  c.decay = weight_decay != 0.0;
  return c;
}

template <class T>
bool adam_update_block(T* param, index_t ld, const T* grad, index_t ld_grad, T* exp_avg,
                       T* exp_avg_sq, index_t rows, index_t cols,
                       const AdamCoefficients<T>& c, T* backup) {
  const unsigned bad = with_flags(
      [&](auto has_backup, auto decay) {
        unsigned block_bad = 0;
        for (index_t r = 0; r < rows; ++r)
          block_bad |= adam_loop<T, has_backup, decay>(
              param + r * ld, grad + r * ld_grad, exp_avg + r * ld, exp_avg_sq + r * ld,
              has_backup ? backup + r * ld : nullptr, cols, c.step_size, c.bc2_sqrt,
              c.one_minus_b1, c.b2, c.one_minus_b2, c.eps, c.weight_decay);
        return block_bad;
      },
      backup != nullptr, c.decay);
  return bad == 0;
}

template <class T>
bool adam_update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, index_t n, double lr,
                 double beta1, double beta2, double eps, double weight_decay, std::int64_t step,
                 T* backup) {
  return adam_update_block(param, n, grad, n, exp_avg, exp_avg_sq, 1, n,
                           adam_coefficients<T>(lr, beta1, beta2, eps, weight_decay, step),
                           backup);
}

template bool sgd_update<float>(float*, const float*, float*, index_t, double, double, double,
                                bool, bool, float*);
template bool sgd_update<double>(double*, const double*, double*, index_t, double, double, double,
                                 bool, bool, double*);
template bool adam_update<float>(float*, const float*, float*, float*, index_t, double, double,
                                 double, double, double, std::int64_t, float*);
template bool adam_update<double>(double*, const double*, double*, double*, index_t, double,
                                  double, double, double, double, std::int64_t, double*);
#define FASTMLP_INSTANTIATE(T)                                                                  \
  template bool sgd_update_block<T>(T*, index_t, const T*, index_t, T*, index_t, index_t,      \
                                    double, double, double, bool, bool, T*);                   \
  template AdamCoefficients<T> adam_coefficients<T>(double, double, double, double, double,    \
                                                    std::int64_t);                             \
  template bool adam_update_block<T>(T*, index_t, const T*, index_t, T*, T*, index_t, index_t, \
                                     const AdamCoefficients<T>&, T*);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
