// A proof, made before a training step updates anything, that the step's update leaves every
// parameter finite. The engine's update is all or nothing (trainer.h): each update pass saves
// the old values to a backup so that a non-finite step can be undone. A step proven finite
// needs no backup of its weights, which saves a write (and its read-for-ownership) of every
// weight per step: about 3 % of the wide net's bfloat16 epoch, whose weights exceed L2.
//
// The proof bounds, in double, the largest |value| of every quantity of the step from the
// maxima of what is known before the first update: every layer's input (the batch's rows, the
// hidden activations), dL/dlogits and dL/da of the layer below the output, the weights and
// the biases. With u the parameter dtype's epsilon, and each GEMM operand possibly rounded
// to bfloat16 (|bf16(x)| ≤ |x|·(1 + 2⁻⁸), finite while |x| ≤ max/4):
//   an n-term sum of products |a|≤A, |b|≤B, accumulated in any order in the dtype:
//       ≤ n·A·B·(1 + 2⁻⁸)²·(1 + u)^(n + 64)  (every partial sum too), = n·A·B·sum_factor(n);
//   backward, the gradients not yet computed (every hidden activation's derivative is at most
//     1 in magnitude): |dA_{l-1}| ≤ n_{l+1}·|dA_l|·|W_l|·sum_factor(n_{l+1});
//   |dW_l| ≤ B·|dA_l|·|in_l|·sum_factor(B) (+ the L2 penalty's alpha/B·|W_l|),
//   |db_l| ≤ B·|dA_l|·sum_factor(B);
//   the update: Optimizer::update_bound (SGD without momentum; other rules give none).
// Every bound must stay below max/4; then no intermediate value and no updated parameter can
// overflow, and none is NaN (finite operands, no 0·inf).
#pragma once

#include <vector>

#include "common.h"
#include "network.h"
#include "optim.h"

namespace fastmlp {

// The maxima the proof starts from (gemm/max_abs.h; +inf where not finite).
struct StepMaxima {
  std::vector<double> inputs;    // per layer, its input: the batch's rows, then activations
  double output_gradient = 0.0;  // dL/dlogits of the batch
  double below_output_gradient = 0.0;  // dL/da_{L-2} (with two layers or more)
  std::vector<double> weights;   // per layer, bounds on |W_l| before the step
  std::vector<double> biases;    // per layer, |b_l| before the step
};

// Per layer, a bound on |dL/dW_l| (the L2 penalty's term included) when every weight and
// bias the step updates is proven to stay finite (and below max/4) under `rule`'s update;
// empty otherwise. With it, rule.update_bound(max |W_l| before the step, that bound) bounds
// |W_l| after the step.
// rows: the batch's; alpha: the L2 penalty (trainer.h); epsilon and max: the dtype's.
std::vector<double> proven_gradient_bounds(const NetworkShape& shape, index_t rows, double alpha,
                                           const StepMaxima& maxima, const Optimizer& rule,
                                           double epsilon, double max);

}  // namespace fastmlp
