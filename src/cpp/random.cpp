// NumPy's legacy MT19937 stream (see random.h): numpy/random/src/mt19937 and
// random_standard_uniform / legacy uniform, in the same arithmetic.
#include "random.h"

#include <algorithm>
#include <vector>

namespace fastmlp {

namespace {

constexpr int kN = 624, kM = 397;
constexpr std::uint32_t kMatrixA = 0x9908b0dfu, kUpper = 0x80000000u, kLower = 0x7fffffffu;

// The standard MT19937 regeneration of all 624 words.
void regenerate(std::uint32_t* key) {
  int i = 0;
  for (; i < kN - kM; ++i) {
    const std::uint32_t y = (key[i] & kUpper) | (key[i + 1] & kLower);
    key[i] = key[i + kM] ^ (y >> 1) ^ (-(y & 1u) & kMatrixA);
  }
  for (; i < kN - 1; ++i) {
    const std::uint32_t y = (key[i] & kUpper) | (key[i + 1] & kLower);
    key[i] = key[i + (kM - kN)] ^ (y >> 1) ^ (-(y & 1u) & kMatrixA);
  }
  const std::uint32_t y = (key[kN - 1] & kUpper) | (key[0] & kLower);
  key[kN - 1] = key[kM - 1] ^ (y >> 1) ^ (-(y & 1u) & kMatrixA);
}

// The tempered outputs of the words key[pos …]; a whole block at a time after each
// regeneration (one loop that vectorises) rather than one call per word.
class WordStream {
 public:
  WordStream(std::uint32_t* key, int pos) : key_(key), pos_(pos) { temper_from(pos); }
  std::uint32_t next() {
    if (pos_ >= kN) {
      regenerate(key_);
      temper_from(0);
      pos_ = 0;
    }
    return tempered_[pos_++];
  }
  int pos() const { return pos_; }

 private:
  void temper_from(int first) {
    for (int i = first; i < kN; ++i) {
      std::uint32_t y = key_[i];
      y ^= y >> 11;
      y ^= (y << 7) & 0x9d2c5680u;
      y ^= (y << 15) & 0xefc60000u;
      y ^= y >> 18;
      tempered_[i] = y;
    }
  }
  std::uint32_t* key_;
  int pos_;
  std::uint32_t tempered_[kN];
};

}  // namespace

template <class T>
int legacy_uniform_transposed(Mt19937State state, T* out, index_t rows, index_t cols, double low,
                              double high) {
  const double range = high - low;
  WordStream words(state.key, state.pos);
  // Draws come row by row (i), but out is written column-major: a row's values land rows
  // elements apart, a power-of-two stride for layers such as 65,536 × 256 that maps every
  // store to the same cache set. So kBlock rows are drawn into a buffer first and written as
  // runs of kBlock consecutive elements of out (a cache line of floats): 3-4× faster there.
  constexpr index_t kBlock = 16;
  static thread_local std::vector<T> buffer;
  buffer.resize(static_cast<std::size_t>(kBlock * cols));
  for (index_t i0 = 0; i0 < rows; i0 += kBlock) {
    const index_t block_rows = std::min(kBlock, rows - i0);
    for (index_t i = 0; i < block_rows; ++i)
      for (index_t j = 0; j < cols; ++j) {
        const std::int32_t a = static_cast<std::int32_t>(words.next() >> 5);
        const std::int32_t b = static_cast<std::int32_t>(words.next() >> 6);
        const double unit = (a * 67108864.0 + b) / 9007199254740992.0;
        buffer[static_cast<std::size_t>(j * kBlock + i)] = static_cast<T>(low + range * unit);
      }
    for (index_t j = 0; j < cols; ++j)
      std::copy_n(buffer.data() + j * kBlock, block_rows, out + j * rows + i0);
  }
  return words.pos();
}

template int legacy_uniform_transposed<float>(Mt19937State, float*, index_t, index_t, double,
                                              double);
template int legacy_uniform_transposed<double>(Mt19937State, double*, index_t, index_t, double,
                                               double);

}  // namespace fastmlp
