// Shared basics of the C++ core: the index type, aligned scratch buffers, error helpers.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

namespace fastmlp {

// Signed, pointer-sized: strides may be negative (NumPy views such as a[::-1]).
using index_t = std::ptrdiff_t;

// Hidden-layer activations (scikit-learn names: logistic is the sigmoid). The one list of
// them: kActivationNames gives each its name, in enum order; the bindings export it
// (fastmlp._core.ACTIVATIONS) and every Python module checks names against that. Adding an
// activation: the enum and its name here, its forward and derivative in activations.cpp.
enum class Activation { identity, relu, tanh, logistic };
inline constexpr const char* kActivationNames[] = {"identity", "relu", "tanh", "logistic"};
inline constexpr int kActivationCount = sizeof(kActivationNames) / sizeof(kActivationNames[0]);

// Counts every heap allocation of the engine's work buffers (AlignedBuffer growths). A steady
// state that allocates nothing shows as a counter that stops moving; tests read it.
inline std::atomic<long long> g_workspace_allocations{0};

// A grow-only, 64-byte aligned buffer. Kernels keep one per thread (thread_local) so that the
// steady state allocates nothing: it grows to the largest size asked for and stays there.
template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  T* reserve(std::size_t count) {
    if (count > capacity_) {
      std::size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
      void* fresh = std::aligned_alloc(64, bytes);
      if (!fresh) throw std::bad_alloc();
      std::free(data_);
      data_ = static_cast<T*>(fresh);
      capacity_ = count;
      g_workspace_allocations.fetch_add(1, std::memory_order_relaxed);
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace fastmlp
