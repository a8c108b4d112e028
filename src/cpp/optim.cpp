// Optimizer update rules (see optim.h). Hyper-parameters arrive as double and are rounded to
// the parameter dtype once, as PyTorch does when it multiplies a tensor by a Python float.
#include "optim.h"

#include <cmath>
#include <limits>

namespace fastmlp {

namespace {
// Whether |v| is finite, as an integer flag the compiler can OR-reduce in vector registers.
template <class T>
inline unsigned not_finite(T v) {
  return !(std::fabs(v) <= std::numeric_limits<T>::max());
}
}  // namespace

template <class T>
bool sgd_update(T* param, const T* grad, T* momentum_buffer, index_t n, double lr,
                double momentum, double weight_decay, bool nesterov, bool first_step,
                T* backup) {
  const T lr_t = static_cast<T>(lr), mu = static_cast<T>(momentum),
          wd = static_cast<T>(weight_decay);
  const bool use_momentum = momentum != 0.0;
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const T p = param[i];
    if (backup) backup[i] = p;
    T g = grad[i];
    if (weight_decay != 0.0) g = g + wd * p;
    if (use_momentum) {
      const T buf = first_step ? g : mu * momentum_buffer[i] + g;
      momentum_buffer[i] = buf;
      g = nesterov ? g + mu * buf : buf;
    }
    const T updated = p - lr_t * g;
    bad |= not_finite(updated);
    param[i] = updated;
  }
  return bad == 0;
}

template <class T>
bool adam_update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, index_t n, double lr,
                 double beta1, double beta2, double eps, double weight_decay, std::int64_t step,
                 T* backup) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const T step_size = static_cast<T>(lr / bias_correction1);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  const T one_minus_b1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2),
          one_minus_b2 = static_cast<T>(1.0 - beta2), eps_t = static_cast<T>(eps),
          wd = static_cast<T>(weight_decay);
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const T p = param[i];
    if (backup) backup[i] = p;
    T g = grad[i];
    if (weight_decay != 0.0) g = g + wd * p;
    const T m = exp_avg[i] + one_minus_b1 * (g - exp_avg[i]);
    const T v = b2 * exp_avg_sq[i] + one_minus_b2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const T updated = p - step_size * (m / (std::sqrt(v) / bc2_sqrt + eps_t));
    bad |= not_finite(updated);
    param[i] = updated;
  }
  return bad == 0;
}

template bool sgd_update<float>(float*, const float*, float*, index_t, double, double, double,
                                bool, bool, float*);
template bool sgd_update<double>(double*, const double*, double*, index_t, double, double, double,
                                 bool, bool, double*);
template bool adam_update<float>(float*, const float*, float*, float*, index_t, double, double,
                                 double, double, double, std::int64_t, float*);
template bool adam_update<double>(double*, const double*, double*, double*, index_t, double,
                                  double, double, double, double, std::int64_t, double*);

}  // namespace fastmlp
