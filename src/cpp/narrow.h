// Dense layers in feature-major layout, for networks whose every layer is narrow.
//
// Legend: B batch rows, I in-features, O out-features. A feature-major matrix stores one
// contiguous run of B values per feature: xT (I,B), outT (O,B), gT (O,B) — the transpose of
// the row-major (B,·) matrices used everywhere else. W (O,I) and b (O) keep their usual
// layout.
//
// Why: a layer of a few units is a product of a few columns. Row-major, such a product
// vectorises over nothing (3 outputs, 2 inputs) and each of the six GEMM calls of a training
// step costs more in set-up than in arithmetic. Feature-major, every loop runs over the batch,
// contiguous and as long as the batch, whatever I and O are.
#pragma once

#include <vector>

#include "common.h"

namespace fastmlp {

// Whether the trainer runs a net of these layer sizes feature-major: every layer (inputs
// included) at most kNarrowMaxWidth wide, above which the row-major GEMM path is faster
// (crossover measured in narrow.cpp), and either at most 64 weights in all or batches of at
// most 64. (Tests force either layout with testing_force_layout, network.h.)
constexpr index_t kNarrowMaxWidth = 8;
bool use_narrow_path(const std::vector<index_t>& sizes, index_t max_batch);

// outT[j,:] = act(Σ_p W[j,p] · xT[p,:] + b_j)   (sum over p in order, then the bias, as the
// GEMM path does; act applied element-wise afterwards, see activation_forward_inplace)
template <class T>
void narrow_forward(T* outT, const T* xT, const T* W, const T* b, index_t B, index_t I,
                    index_t O, Activation act);

// grad_b[j] = Σ_i gT[j,i],  grad_W[j,p] = Σ_i gT[j,i] · xT[p,i]   (overwritten)
template <class T>
void narrow_parameter_gradients(T* grad_W, T* grad_b, const T* gT, const T* xT, index_t B,
                                index_t I, index_t O);

// gxT[p,:] = Σ_j W[j,p] · gT[j,:]   (dL/d input, before the activation backward below it)
template <class T>
void narrow_input_gradient(T* gxT, const T* gT, const T* W, index_t B, index_t I, index_t O);

// out (cols, rows) = in (rows, cols)ᵀ, in with row stride ld_in; out contiguous.
template <class T>
void transpose_into(T* out, const T* in, index_t rows, index_t cols, index_t ld_in);

}  // namespace fastmlp
