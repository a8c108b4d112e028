// The finite-update proof (update_bound.h).
#include "update_bound.h"

#include <cmath>

namespace fastmlp {

std::vector<double> proven_gradient_bounds(const NetworkShape& shape, index_t rows, double alpha,
                                           const StepMaxima& maxima, const Optimizer& rule,
                                           double epsilon, double max) {
  const std::vector<index_t>& n = shape.sizes;
  const index_t L = shape.layers();
  const double limit = max / 4;
  const double bf16_unit = 1.0 / 256;  // a bfloat16 rounding's relative change, at most 2⁻⁸
  // n products of values rounded to bfloat16, summed in the dtype (any order, a few dozen
  // K blocks or partial sums at most: the 64).
  auto sum_factor = [&](index_t terms) {
    return (1 + bf16_unit) * (1 + bf16_unit) *
           std::exp(static_cast<double>(terms + 64) * epsilon);
  };
  const double one_op = 1 + 4 * epsilon;  // a few roundings of one elementwise operation
  auto bounded = [&](double x) { return x <= limit; };  // false for NaN and inf
  for (index_t l = 0; l < L; ++l)
    if (!bounded(maxima.inputs[static_cast<std::size_t>(l)])) return {};
  if (!bounded(maxima.output_gradient)) return {};
  if (L >= 2 && !bounded(maxima.below_output_gradient)) return {};
  // Backward, from the logits down: gradient = a bound on |dL/da_l|.
  const double B = static_cast<double>(rows);
  double gradient = maxima.output_gradient;
  std::vector<double> weight_gradients(static_cast<std::size_t>(L));
  for (index_t l = L - 1; l >= 0; --l) {
    const std::size_t i = static_cast<std::size_t>(l);
    const double w = maxima.weights[i], b = maxima.biases[i];
    if (!bounded(w) || !bounded(b)) return {};
    double weight_gradient = B * gradient * maxima.inputs[i] * sum_factor(rows);
    if (alpha != 0.0) weight_gradient = (weight_gradient + std::fabs(alpha) / B * w) * one_op;
    const double bias_gradient = B * gradient * sum_factor(rows);
    if (!bounded(weight_gradient) || !bounded(bias_gradient)) return {};
    weight_gradients[i] = weight_gradient;
    if (!bounded(rule.update_bound(w, weight_gradient)) ||
        !bounded(rule.update_bound(b, bias_gradient)))
      return {};
    if (l == L - 1) {
      gradient = maxima.below_output_gradient;  // measured: computed before this proof
    } else if (l > 0) {
      gradient = static_cast<double>(n[l + 1]) * gradient * w * sum_factor(n[l + 1]) * one_op;
      if (!bounded(gradient)) return {};
    }
  }
  return weight_gradients;
}

}  // namespace fastmlp
