// NumPy's legacy random stream (numpy.random.RandomState: MT19937, and its uniform doubles)
// reproduced bit for bit, so that a large layer is initialised as scikit-learn initialises it
// from a random_state without NumPy's per-draw overhead and without a transposed copy.
#pragma once

#include <cstdint>

#include "common.h"

namespace fastmlp {

// The generator's state as RandomState.get_state(legacy=False)["state"] gives it: 624 words
// and the position of the next one (624: regenerate first).
struct Mt19937State {
  std::uint32_t* key;  // (624), updated in place
  int pos;
};

// Draws rows·cols values of RandomState.uniform(low, high, (rows, cols)) — each
// low + (high - low) · (a·2²⁶ + b) / 2⁵³ from two 32-bit words a >> 5, b >> 6 — and writes
// draw (i, j) to out[j · rows + i] (the transpose, (cols, rows)), rounded to T. Returns the
// new position; state.key is advanced in place.
template <class T>
int legacy_uniform_transposed(Mt19937State state, T* out, index_t rows, index_t cols, double low,
                              double high);

}  // namespace fastmlp
