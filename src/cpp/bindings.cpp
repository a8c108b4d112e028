// The Python bindings of fastmlp._core: the only file that includes pybind11.
//
// These functions are the thin, strict layer under fastmlp.ops / fastmlp.model, which give the
// friendly validation messages. Here every precondition that protects memory (dtype, ndim,
// shapes, strides, writeability, label range) is checked again, so no call from Python can
// crash the process; the GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "activations.h"
#include "checks.h"
#include "cpu.h"
#include "cpu_cache.h"
#include "dense.h"
#include "gemm/bf16.h"
#include "gemm/context.h"
#include "gemm/gemm.h"
#include "loss.h"
#include "optim.h"
#include "random.h"
#include "threads.h"
#include "narrow.h"
#include "network.h"
#include "quantized.h"
#include "gemm/int8.h"
#include "trainer.h"

namespace py = pybind11;
using namespace fastmlp;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(a.shape(d));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

// Whether `a` holds T in native byte order. Equivalence, not identity, of the dtype objects:
// an unpickled array, for one, carries its own equal descriptor.
template <class T>
bool has_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(),
                                                        py::dtype::of<T>().ptr());
}

// Calls f(T{}) with T the float dtype of `a`, or raises TypeError.
template <class F>
decltype(auto) with_float_dtype(const py::array& a, const char* name, F&& f) {
  if (has_dtype<float>(a)) return f(float{});
  if (has_dtype<double>(a)) return f(double{});
  throw py::type_error(std::string(name) + " must be float32 or float64, got " +
                       py::str(a.dtype()).cast<std::string>());
}

template <class T>
void require_dtype(const py::array& a, const char* name) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + " has dtype " +
                         py::str(a.dtype()).cast<std::string>() + " but " +
                         py::str(py::dtype::of<T>()).cast<std::string>() +
                         " was expected (all operands must share one dtype)");
}

void require_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) +
                          "-D, got shape " + shape_str(a));
}

template <class T>
StridedMatrix<T> strided(const py::array& a, const char* name) {
  require_dtype<T>(a, name);
  require_ndim(a, name, 2);
  const py::ssize_t item = static_cast<py::ssize_t>(sizeof(T));
  if (a.strides(0) % item != 0 || a.strides(1) % item != 0 ||
      reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0)
    throw py::value_error(std::string(name) +
                          " is not aligned to its item size (strides or start address)");
  return {static_cast<const T*>(a.data()), a.strides(0) / item, a.strides(1) / item};
}

template <class T>
const T* contiguous(const py::array& a, const char* name) {
  require_dtype<T>(a, name);
  if (!(a.flags() & py::array::c_style) ||
      reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0)
    throw py::value_error(std::string(name) + " must be C-contiguous and aligned");
  return static_cast<const T*>(a.data());
}

template <class T>
T* writable_contiguous(py::array& a, const char* name) {
  contiguous<T>(a, name);
  if (!a.writeable()) throw py::value_error(std::string(name) + " is read-only");
  return static_cast<T*>(a.mutable_data());
}

void require_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> dims) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(dims.size());
  py::ssize_t d = 0;
  for (py::ssize_t want : dims) ok = ok && a.shape(d++) == want;
  if (!ok) {
    std::string expected = "(";
    d = 0;
    for (py::ssize_t want : dims) expected += (d++ ? ", " : "") + std::to_string(want);
    if (dims.size() == 1) expected += ",";
    throw py::value_error(std::string(name) + " has shape " + shape_str(a) + ", expected " +
                          expected + ")");
  }
}

const std::int64_t* labels_view(const py::array& labels, py::ssize_t n) {
  if (!has_dtype<std::int64_t>(labels))
    throw py::type_error("labels must be int64 here (fastmlp.ops converts integer labels)");
  require_shape(labels, "labels", {n});
  if (!(labels.flags() & py::array::c_style) ||
      reinterpret_cast<std::uintptr_t>(labels.data()) % alignof(std::int64_t) != 0)
    throw py::value_error("labels must be C-contiguous and aligned");
  return static_cast<const std::int64_t*>(labels.data());
}

// Runs f() with the GIL released; the kernels' std::invalid_argument (a bad label or weight
// found mid-computation) becomes a Python ValueError.
// A problem the thread pool met while starting (threads the OS refused, a capped
// FASTMLP_NUM_THREADS), as a RuntimeWarning: the pool may start inside any call that runs a
// product, with the GIL released, so every such call checks after it returns (an atomic load).
void warn_thread_problems() {
  const std::string message = take_thread_warning();
  if (!message.empty() && PyErr_WarnEx(PyExc_RuntimeWarning, message.c_str(), 1) < 0)
    throw py::error_already_set();
}

template <class F>
auto without_gil_unchecked(F&& f) {
  py::gil_scoped_release release;
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    py::gil_scoped_acquire acquire;
    throw py::value_error(e.what());
  }
}

template <class F>
auto without_gil(F&& f) {
  if constexpr (std::is_void_v<decltype(f())>) {
    without_gil_unchecked(std::forward<F>(f));
    warn_thread_problems();
  } else {
    auto result = without_gil_unchecked(std::forward<F>(f));
    warn_thread_problems();
    return result;
  }
}

Activation parse_activation(const std::string& name) {
  std::string choices;
  for (int i = 0; i < kActivationCount; ++i) {
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
    choices += std::string(i ? ", '" : "'") + kActivationNames[i] + "'";
  }
  throw py::value_error("activation must be one of " + choices + ", got '" + name + "'");
}

// op(a) @ op(b) as GemmArgs, op(m) = m or mᵀ (a transpose is a swap of strides, never a copy);
// the sink is left to the caller.
template <class T>
GemmArgs<T> matmul_operands(const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
  StridedMatrix<T> A = strided<T>(a, "a"), B = strided<T>(b, "b");
  index_t M = a.shape(0), K = a.shape(1);
  if (trans_a) {
    std::swap(M, K);
    std::swap(A.row_stride, A.col_stride);
  }
  index_t Kb = b.shape(0), N = b.shape(1);
  if (trans_b) {
    std::swap(Kb, N);
    std::swap(B.row_stride, B.col_stride);
  }
  if (K != Kb)
    throw py::value_error("matmul: op(a) has shape (" + std::to_string(M) + ", " +
                          std::to_string(K) + ") and op(b) has shape (" + std::to_string(Kb) +
                          ", " + std::to_string(N) + "): inner dimensions differ");
  GemmArgs<T> g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = A.data;
  g.rs_a = A.row_stride;
  g.cs_a = A.col_stride;
  g.B = B.data;
  g.rs_b = B.row_stride;
  g.cs_b = B.col_stride;
  return g;
}

py::array matmul(const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
  return with_float_dtype(a, "a", [&](auto tag) -> py::array {
    using T = decltype(tag);
    GemmArgs<T> g = matmul_operands<T>(a, b, trans_a, trans_b);
    py::array_t<T> out({g.M, g.N});
    g.sink.C = out.mutable_data();
    g.sink.ldc = g.N;
    without_gil([&] { gemm(g); });
    return std::move(out);
  });
}

// op(a) @ op(b) with the operands rounded to bfloat16 and float32 accumulation (gemm/bf16.h):
// float32 only; float64 operands would lose 45 of their 53 bits without saying so.
py::array matmul_bf16(const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
  for (const auto& [operand, name] : {std::pair{&a, "a"}, std::pair{&b, "b"}})
    if (!has_dtype<float>(*operand))
      throw py::type_error(
          std::string("matmul with precision='bfloat16' takes float32 operands; ") + name +
          " has dtype " + py::str(operand->dtype()).cast<std::string>() +
          (has_dtype<double>(*operand) ? " (float64 refuses bfloat16 rounding)" : ""));
  GemmArgs<float> g = matmul_operands<float>(a, b, trans_a, trans_b);
  py::array_t<float> out({g.M, g.N});
  g.sink.C = out.mutable_data();
  g.sink.ldc = g.N;
  without_gil([&] { gemm_bf16(g); });
  return std::move(out);
}

// Test hook: the product through a tile consumer (TileSink::consumer), whose tiles are copied
// into the result; returns (result, how many times each element was handed over).
py::tuple matmul_via_consumer(const py::array& a, const py::array& b, bool trans_a,
                              bool trans_b) {
  return with_float_dtype(a, "a", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    GemmArgs<T> g = matmul_operands<T>(a, b, trans_a, trans_b);
    const index_t M = g.M, N = g.N;
    py::array_t<T> out({M, N});
    py::array_t<std::int32_t> counts({M, N});
    std::fill_n(counts.mutable_data(), M * N, 0);
    struct Sink {
      T* out;
      std::int32_t* counts;
      index_t ld;
    } sink{out.mutable_data(), counts.mutable_data(), N};
    g.sink.consumer.context = &sink;
    g.sink.consumer.consume = [](void* context, T* tile, index_t ld_tile, index_t row,
                                 index_t col, index_t m, index_t n) {
      const Sink& to = *static_cast<const Sink*>(context);
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) {
          to.out[(row + i) * to.ld + col + j] = tile[i * ld_tile + j];
          to.counts[(row + i) * to.ld + col + j] += 1;
        }
    };
    without_gil([&] { gemm(g); });
    return py::make_tuple(out, counts);
  });
}

// Test hook: op(a) @ op(b) through the whole epilogue (TileSink): c (M,N) := [mask > 0] ·
// relu?((accumulate ? c : 0) + op(a) op(b) + bias), into a copy of c, which is returned.
py::array matmul_with_epilogue(const py::array& a, const py::array& b, bool trans_a,
                               bool trans_b, const py::array& c, bool accumulate,
                               const std::optional<py::array>& bias, bool relu,
                               const std::optional<py::array>& mask) {
  return with_float_dtype(a, "a", [&](auto tag) -> py::array {
    using T = decltype(tag);
    GemmArgs<T> g = matmul_operands<T>(a, b, trans_a, trans_b);
    require_shape(c, "c", {g.M, g.N});
    py::array_t<T> out({g.M, g.N});
    std::copy_n(contiguous<T>(c, "c"), g.M * g.N, out.mutable_data());
    g.sink.C = out.mutable_data();
    g.sink.ldc = g.N;
    g.sink.accumulate = accumulate;
    g.sink.relu = relu;
    if (bias) {
      require_shape(*bias, "bias", {g.N});
      g.sink.bias = contiguous<T>(*bias, "bias");
    }
    if (mask) {
      require_shape(*mask, "mask", {g.M, g.N});
      g.sink.mask = contiguous<T>(*mask, "mask");
      g.sink.ld_mask = g.N;
    }
    without_gil([&] { gemm(g); });
    return std::move(out);
  });
}

// The names of GemmPath in fastmlp._testing.
constexpr std::pair<GemmPath, const char*> kGemmPathNames[] = {
    {GemmPath::automatic, "automatic"},
    {GemmPath::reference, "reference"},
    {GemmPath::in_place, "in-place"},
    {GemmPath::packed, "packed"},
};

GemmPath parse_gemm_path(const std::string& name) {
  for (const auto& [path, path_name] : kGemmPathNames)
    if (name == path_name) return path;
  throw py::value_error(
      "GEMM path must be 'automatic', 'reference', 'in-place' or 'packed', got '" + name + "'");
}

const char* gemm_path_name(GemmPath path) {
  for (const auto& [known, name] : kGemmPathNames)
    if (path == known) return name;
  return "unknown";
}

py::array dense_forward_py(const py::array& x, const py::array& W, const py::array& b,
                           const std::string& activation) {
  const Activation act = parse_activation(activation);
  return with_float_dtype(x, "x", [&](auto tag) -> py::array {
    using T = decltype(tag);
    StridedMatrix<T> xs = strided<T>(x, "x"), Ws = strided<T>(W, "W");
    const index_t B = x.shape(0), I = x.shape(1), O = W.shape(0);
    require_shape(W, "W", {O, I});
    require_shape(b, "b", {O});
    const T* bp = contiguous<T>(b, "b");
    py::array_t<T> out({B, O});
    T* op = out.mutable_data();
    without_gil([&] { dense_forward(op, xs, Ws, bp, B, I, O, act); });
    return out;
  });
}

py::tuple dense_backward_py(const py::array& x, const py::array& W, const py::array& out,
                            const py::array& grad_out, const std::string& activation,
                            bool need_grad_x) {
  const Activation act = parse_activation(activation);
  return with_float_dtype(x, "x", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    StridedMatrix<T> xs = strided<T>(x, "x"), Ws = strided<T>(W, "W");
    const index_t B = x.shape(0), I = x.shape(1), O = W.shape(0);
    require_shape(W, "W", {O, I});
    require_shape(out, "out", {B, O});
    require_shape(grad_out, "grad_out", {B, O});
    const T* out_p = contiguous<T>(out, "out");
    const T* grad_out_p = contiguous<T>(grad_out, "grad_out");
    py::array_t<T> grad_W({O, I}), grad_b(O);
    py::object grad_x = py::none();
    T* grad_x_p = nullptr;
    if (need_grad_x) {
      py::array_t<T> gx({B, I});
      grad_x_p = gx.mutable_data();
      grad_x = gx;
    }
    T* grad_W_p = grad_W.mutable_data();
    T* grad_b_p = grad_b.mutable_data();
    without_gil([&] {
      static thread_local AlignedBuffer<T> scratch;
      T* scratch_p = act != Activation::identity
                         ? scratch.reserve(static_cast<std::size_t>(B) * static_cast<std::size_t>(O))
                         : nullptr;
      dense_backward(grad_x_p, grad_W_p, grad_b_p, scratch_p, xs, Ws, out_p, grad_out_p, B, I, O,
                     act);
    });
    return py::make_tuple(grad_x, grad_W, grad_b);
  });
}

// out = f(x) for a contiguous x of any shape.
template <class Kernel>
py::array elementwise(const py::array& x, const char* name, Kernel kernel) {
  return with_float_dtype(x, name, [&](auto tag) -> py::array {
    using T = decltype(tag);
    const T* xp = contiguous<T>(x, name);
    py::array_t<T> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    T* op = out.mutable_data();
    const index_t n = x.size();
    py::gil_scoped_release release;
    kernel(op, xp, n);
    return out;
  });
}

py::array relu_grad_py(const py::array& grad_out, const py::array& out) {
  return with_float_dtype(grad_out, "grad_out", [&](auto tag) -> py::array {
    using T = decltype(tag);
    const T* gp = contiguous<T>(grad_out, "grad_out");
    const T* op = contiguous<T>(out, "out");
    if (out.ndim() != grad_out.ndim() ||
        !std::equal(out.shape(), out.shape() + out.ndim(), grad_out.shape()))
      throw py::value_error("relu_grad: grad_out has shape " + shape_str(grad_out) +
                            " but out has shape " + shape_str(out) + "; they must match");
    py::array_t<T> grad_in(std::vector<py::ssize_t>(out.shape(), out.shape() + out.ndim()));
    T* ip = grad_in.mutable_data();
    const index_t n = out.size();
    py::gil_scoped_release release;
    relu_backward(ip, gp, op, n);
    return grad_in;
  });
}

py::array softmax_py(const py::array& x) {
  require_ndim(x, "x", 2);
  return with_float_dtype(x, "x", [&](auto tag) -> py::array {
    using T = decltype(tag);
    const T* xp = contiguous<T>(x, "x");
    const index_t rows = x.shape(0), cols = x.shape(1);
    py::array_t<T> out({rows, cols});
    T* op = out.mutable_data();
    py::gil_scoped_release release;
    if (cols > 0) softmax_forward(op, xp, rows, cols);
    return out;
  });
}

// Sample weights: None, or a contiguous (n,) array of the operands' dtype.
template <class T>
const T* weights_view(const py::object& weights, py::ssize_t n) {
  if (weights.is_none()) return nullptr;
  py::array w = weights.cast<py::array>();
  require_shape(w, "sample_weight", {n});
  return contiguous<T>(w, "sample_weight");
}

py::tuple softmax_nll_py(const py::array& logits, const py::array& labels,
                         const py::object& weights) {
  require_ndim(logits, "logits", 2);
  return with_float_dtype(logits, "logits", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const T* zp = contiguous<T>(logits, "logits");
    const index_t N = logits.shape(0), K = logits.shape(1);
    const std::int64_t* yp = labels_view(labels, N);
    const T* wp = weights_view<T>(weights, N);
    py::array_t<T> dlogits({N, K});
    T* dp = dlogits.mutable_data();
    const double loss = without_gil([&] { return softmax_nll(dp, zp, yp, wp, N, K); });
    return py::make_tuple(loss, dlogits);
  });
}

py::tuple sigmoid_bce_py(const py::array& logits, const py::array& labels,
                         const py::object& weights) {
  return with_float_dtype(logits, "logits", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const T* zp = contiguous<T>(logits, "logits");
    const index_t N = logits.size();
    const std::int64_t* yp = labels_view(labels, N);
    const T* wp = weights_view<T>(weights, N);
    py::array_t<T> dlogits(std::vector<py::ssize_t>(logits.shape(), logits.shape() + logits.ndim()));
    T* dp = dlogits.mutable_data();
    const double loss = without_gil([&] { return sigmoid_bce(dp, zp, yp, wp, N); });
    return py::make_tuple(loss, dlogits);
  });
}

// A loss over (N, K) outputs and (N, K) targets of the same dtype: squared_error,
// sigmoid_bce_multi, poisson_deviance (their target checks are the kernels').
template <template <class> class Kernel>
py::tuple target_loss_py(const py::array& out, const py::array& target,
                         const py::object& weights, const char* out_name) {
  require_ndim(out, out_name, 2);
  return with_float_dtype(out, out_name, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const T* op = contiguous<T>(out, out_name);
    const index_t N = out.shape(0), K = out.shape(1);
    require_shape(target, "target", {N, K});
    const T* tp = contiguous<T>(target, "target");
    const T* wp = weights_view<T>(weights, N);
    py::array_t<T> dout({N, K});
    T* dp = dout.mutable_data();
    const double loss = without_gil([&] { return Kernel<T>::call(dp, op, tp, wp, N, K); });
    return py::make_tuple(loss, dout);
  });
}

template <class T>
struct SquaredError {
  static double call(T* d, const T* z, const T* y, const T* w, index_t N, index_t K) {
    return squared_error(d, z, y, w, N, K);
  }
};

template <class T>
struct SigmoidBceMulti {
  static double call(T* d, const T* z, const T* y, const T* w, index_t N, index_t K) {
    return sigmoid_bce_multi(d, z, y, w, N, K);
  }
};

template <class T>
struct PoissonDeviance {
  static double call(T* d, const T* z, const T* y, const T* w, index_t N, index_t K) {
    return poisson_deviance(d, z, y, w, N, K);
  }
};

// ---- optimizers ------------------------------------------------------------------------------

const char* dtype_name(DType d) { return d == DType::float32 ? "float32" : "float64"; }

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::float32;
  if (name == "float64") return DType::float64;
  throw py::value_error("dtype must be 'float32' or 'float64', got '" + name + "'");
}

std::vector<index_t> shape_of(const py::array& a) {
  return std::vector<index_t>(a.shape(), a.shape() + a.ndim());
}

void require_idle(const Optimizer& o) {
  if (o.users > 0)
    throw std::runtime_error("the optimizer is in use by a running fit; wait for it to finish");
}

// Which state array of the rule `name` is, or ValueError.
int state_index(const Optimizer& o, const std::string& name) {
  const auto& names = o.state_names();
  for (std::size_t k = 0; k < names.size(); ++k)
    if (names[k] == name) return static_cast<int>(k);
  throw py::value_error(std::string(o.name()) + " has no state '" + name + "'");
}

int param_index(const Optimizer& o, py::ssize_t param) {
  if (param < 0 || param >= static_cast<py::ssize_t>(o.shapes().size()))
    throw py::index_error("parameter index " + std::to_string(param) + " out of range (" +
                          std::to_string(o.shapes().size()) + " parameters)");
  return static_cast<int>(param);
}

// A copy of state array `name` of parameter `param`, in the parameter's shape.
py::array state_copy(const Optimizer& o, py::ssize_t param, const std::string& name) {
  const int i = param_index(o, param), k = state_index(o, name);
  const std::vector<index_t>& shape = o.shapes()[static_cast<std::size_t>(i)];
  auto copy = [&](auto zero) -> py::array {
    using T = decltype(zero);
    py::array_t<T> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    std::copy_n(o.state<T>(i, k), o.numel(i), out.mutable_data());
    return std::move(out);
  };
  return o.dtype() == DType::float32 ? copy(float{}) : copy(double{});
}

void set_state(Optimizer& o, py::ssize_t param, const std::string& name, const py::array& value) {
  require_idle(o);
  const int i = param_index(o, param), k = state_index(o, name);
  const std::vector<index_t>& shape = o.shapes()[static_cast<std::size_t>(i)];
  if (shape_of(value) != shape)
    throw py::value_error("state '" + name + "' of parameter " + std::to_string(param) +
                          " has shape " + shape_str(value) + ", not the parameter's");
  auto assign = [&](auto zero) {
    using T = decltype(zero);
    std::copy_n(contiguous<T>(value, name.c_str()), o.numel(i), o.state<T>(i, k));
  };
  o.dtype() == DType::float32 ? assign(float{}) : assign(double{});
}

// One step over whole arrays: params[i] -= rule(grads[i]), in place.
void optimizer_step(Optimizer& o, py::list params, py::list grads) {
  require_idle(o);
  const std::size_t n = params.size();
  if (!o.bound() || grads.size() != n || o.shapes().size() != n)
    throw py::value_error("step needs one gradient per parameter, of the shapes bound");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T*> p(n);
    std::vector<const T*> g(n);
    for (std::size_t i = 0; i < n; ++i) {
      py::array pa = params[i], ga = grads[i];
      const std::string name = "params[" + std::to_string(i) + "]";
      p[i] = writable_contiguous<T>(pa, name.c_str());
      g[i] = contiguous<T>(ga, ("grads[" + std::to_string(i) + "]").c_str());
      if (shape_of(pa) != o.shapes()[i] || shape_of(ga) != o.shapes()[i])
        throw py::value_error(name + " or its gradient does not have the shape bound");
    }
    py::gil_scoped_release release;
    o.begin_step();
    for (std::size_t i = 0; i < n; ++i) {
      const int param = static_cast<int>(i);
      const index_t numel = o.numel(param);
      ParamBlock<T> block = o.block(param, 0, p[i], numel, g[i], numel, 1, numel,
                                    static_cast<T*>(nullptr));
      o.update(block);
    }
    o.end_step();
  };
  o.dtype() == DType::float32 ? run(float{}) : run(double{});
}

void bind_optimizers(py::module_& m) {
  py::class_<Optimizer>(m, "Optimizer", "an update rule, its state and its step count")
      .def_property_readonly("name", &Optimizer::name)
      .def_property_readonly("state_names", &Optimizer::state_names)
      // Whether the next update reads state (SGD without momentum: no).
      .def_property_readonly("reads_state",
                             [](const Optimizer& o) { return o.states_read() > 0; })
      // Whether every state array holds zeros only (unbound: true), without copying them.
      .def_property_readonly("state_is_zero", [](const Optimizer& o) {
        if (!o.bound()) return true;
        const auto zeros = [&](auto zero) {
          using T = decltype(zero);
          const int arrays = static_cast<int>(o.shapes().size());
          const int states = static_cast<int>(o.state_names().size());
          for (int i = 0; i < arrays; ++i)
            for (int k = 0; k < states; ++k) {
              const T* values = o.state<T>(i, k);
              if (!std::all_of(values, values + o.numel(i), [](T v) { return v == T(0); }))
                return false;
            }
          return true;
        };
        return o.dtype() == DType::float32 ? zeros(float{}) : zeros(double{});
      })
      .def_readwrite("lr", &Optimizer::lr)
      .def_property("steps", [](const Optimizer& o) { return o.steps; },
                    [](Optimizer& o, std::int64_t steps) {
                      require_idle(o);  // the engine advances it while it runs
                      o.steps = steps;
                    })
      .def_property_readonly("bound", &Optimizer::bound)
      .def_property_readonly("shapes", &Optimizer::shapes)
      .def_property_readonly("dtype", [](const Optimizer& o) -> py::object {
        if (!o.bound()) return py::none();
        return py::str(dtype_name(o.dtype()));
      })
      .def("bind", [](Optimizer& o, const std::vector<std::vector<index_t>>& shapes,
                      const std::string& dtype) {
        require_idle(o);
        try {
          o.bind(shapes, parse_dtype(dtype));
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      }, py::arg("shapes"), py::arg("dtype"))
      .def("reset", [](Optimizer& o) { require_idle(o); o.reset(); })
      .def("state", &state_copy, py::arg("param"), py::arg("name"))
      .def("set_state", &set_state, py::arg("param"), py::arg("name"), py::arg("value"))
      .def("started", [](const Optimizer& o, py::ssize_t param) {
        return o.started(param_index(o, param));
      }, py::arg("param"))
      .def("set_started", [](Optimizer& o, py::ssize_t param, bool started) {
        require_idle(o);
        o.set_started(param_index(o, param), started);
      }, py::arg("param"), py::arg("started"))
      .def("step", &optimizer_step, py::arg("params"), py::arg("grads"));
  // One line per rule: its constructor and its hyper-parameters.
  py::class_<Sgd, Optimizer>(m, "SGD")
      .def(py::init<double, double, double, bool>(), py::arg("lr"), py::arg("momentum"),
           py::arg("weight_decay"), py::arg("nesterov"))
      .def_readwrite("momentum", &Sgd::momentum)
      .def_readwrite("weight_decay", &Sgd::weight_decay)
      .def_readwrite("nesterov", &Sgd::nesterov);
  py::class_<Adam, Optimizer>(m, "Adam")
      .def(py::init<double, double, double, double, double>(), py::arg("lr"), py::arg("beta1"),
           py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"))
      .def_readwrite("beta1", &Adam::beta1)
      .def_readwrite("beta2", &Adam::beta2)
      .def_readwrite("eps", &Adam::eps)
      .def_readwrite("weight_decay", &Adam::weight_decay);
  py::class_<AdamW, Adam>(m, "AdamW")
      .def(py::init<double, double, double, double, double>(), py::arg("lr"), py::arg("beta1"),
           py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"));
}

// ---- the network: training engine, gradients, inference -------------------------------------

template <class T>
T* parameter_pointer(const py::handle& item, const std::string& name,
                     std::initializer_list<py::ssize_t> shape) {
  py::array a = py::reinterpret_borrow<py::array>(item);
  require_shape(a, name.c_str(), shape);
  return writable_contiguous<T>(a, name.c_str());
}

OutputKind parse_output(const std::string& output) {
  if (output == "softmax") return OutputKind::softmax;
  if (output == "sigmoid") return OutputKind::sigmoid;
  if (output == "identity") return OutputKind::identity;
  if (output == "multilabel") return OutputKind::sigmoid_multi;
  if (output == "poisson") return OutputKind::poisson;
  throw py::value_error(
      "output must be 'softmax', 'sigmoid', 'identity', 'multilabel' or 'poisson', got '" +
      output + "'");
}

// The network's shape and parameter pointers from Python lists, every array checked: T,
// contiguous, chained shapes; writable when the caller updates them.
template <class T>
struct NetworkArgs {
  NetworkShape shape;
  std::vector<T*> weights, biases;  // read-only unless network_args was asked for writable
};

template <class T>
NetworkArgs<T> network_args(py::list weights, py::list biases, const std::string& activation,
                            const std::string& output, bool writable) {
  NetworkArgs<T> net;
  net.shape.hidden = parse_activation(activation);
  net.shape.output = parse_output(output);
  const py::ssize_t n_layers = static_cast<py::ssize_t>(weights.size());
  if (n_layers < 1 || static_cast<py::ssize_t>(biases.size()) != n_layers)
    throw py::value_error("weights and biases must be non-empty lists of equal length");
  const py::dtype dtype = py::dtype::of<T>();
  net.shape.sizes.reserve(static_cast<std::size_t>(n_layers) + 1);
  net.weights.reserve(static_cast<std::size_t>(n_layers));
  net.biases.reserve(static_cast<std::size_t>(n_layers));
  for (py::ssize_t l = 0; l < n_layers; ++l) {
    py::array w = weights[l], b = biases[l];
    // The common case checked without building a name (predict of one row takes ~1 µs: the
    // names cost a tenth of it); anything amiss is checked again below, with names.
    auto usable = [&](const py::array& a) {
      return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), dtype.ptr()) &&
             (a.flags() & py::array::c_style) &&
             reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) == 0 &&
             (!writable || a.writeable());
    };
    if (w.ndim() == 2 && b.ndim() == 1 && b.shape(0) == w.shape(0) &&
        (l == 0 || w.shape(1) == net.shape.sizes.back()) && usable(w) && usable(b)) {
      if (l == 0) net.shape.sizes.push_back(w.shape(1));
      net.shape.sizes.push_back(w.shape(0));
      net.weights.push_back(static_cast<T*>(const_cast<void*>(w.data())));
      net.biases.push_back(static_cast<T*>(const_cast<void*>(b.data())));
      continue;
    }
    const std::string w_name = "weights[" + std::to_string(l) + "]";
    const std::string b_name = "biases[" + std::to_string(l) + "]";
    require_ndim(w, w_name.c_str(), 2);
    if (l == 0) net.shape.sizes.push_back(w.shape(1));
    if (w.shape(1) != net.shape.sizes.back())
      throw py::value_error(w_name + " does not chain: its in-size " + std::to_string(w.shape(1)) +
                            " differs from the layer below's " +
                            std::to_string(net.shape.sizes.back()));
    require_shape(b, b_name.c_str(), {w.shape(0)});
    if (writable) {
      writable_contiguous<T>(w, w_name.c_str());
      writable_contiguous<T>(b, b_name.c_str());
    } else {
      contiguous<T>(w, w_name.c_str());
      contiguous<T>(b, b_name.c_str());
    }
    throw std::logic_error("network_args: a check failed without an error");  // unreachable
  }
  if (net.shape.output == OutputKind::sigmoid && net.shape.sizes.back() != 1)
    throw py::value_error("a sigmoid output needs one logit");
  return net;
}

// The GEMM precision a model asks for ("float32" or "bfloat16", gemm.h's PrecisionScope).
// bfloat16 rounds float32 operands only: float64 models refuse it.
template <class T>
GemmPrecision precision_arg(const std::string& name) {
  if (name == "float32") return GemmPrecision::float32;
  if (name != "bfloat16")
    throw py::value_error("precision must be 'float32' or 'bfloat16', got '" + name + "'");
  if (!std::is_same_v<T, float>)
    throw py::value_error("precision='bfloat16' rounds float32 operands: a float64 model "
                          "refuses it (use dtype='float32')");
  return GemmPrecision::bfloat16;
}

// The rows of a CSR matrix (n_rows, n_features) from its three arrays: indptr int64
// (n_rows + 1), non-decreasing from 0 to nnz; indices int32 (nnz), each in [0, n_features);
// values (nnz) of T. Checked in full (O(n_rows + nnz), without the GIL): a malformed matrix is
// a ValueError, never a read out of bounds. (fastmlp's Python layer converts scipy.sparse.)
template <class T>
SparseRows<T> csr_view(const py::array& indptr, const py::array& indices, const py::array& values,
                       py::ssize_t n_rows, py::ssize_t n_features) {
  if (!has_dtype<std::int64_t>(indptr) || !has_dtype<std::int32_t>(indices))
    throw py::type_error("a CSR matrix's indptr must be int64 and its indices int32, got " +
                         py::str(indptr.dtype()).cast<std::string>() + " and " +
                         py::str(indices.dtype()).cast<std::string>());
  require_shape(indptr, "indptr", {n_rows + 1});
  require_ndim(indices, "indices", 1);
  require_shape(values, "values", {indices.shape(0)});
  SparseRows<T> x;
  x.indptr = contiguous<std::int64_t>(indptr, "indptr");
  x.indices = contiguous<std::int32_t>(indices, "indices");
  x.values = contiguous<T>(values, "values");
  const std::int64_t nnz = indices.shape(0);
  const std::string problem = without_gil([&]() -> std::string {
    if (x.indptr[0] != 0 || x.indptr[n_rows] != nnz)
      return "indptr must start at 0 and end at the number of non-zeros (" +
             std::to_string(nnz) + "), got " + std::to_string(x.indptr[0]) + " … " +
             std::to_string(x.indptr[n_rows]);
    for (py::ssize_t i = 0; i < n_rows; ++i)
      if (x.indptr[i + 1] < x.indptr[i])
        return "indptr must be non-decreasing; it decreases after row " + std::to_string(i);
    for (std::int64_t k = 0; k < nnz; ++k)
      if (x.indices[k] < 0 || x.indices[k] >= n_features)
        return "column index " + std::to_string(x.indices[k]) + " is out of range for " +
               std::to_string(n_features) + " features";
    return {};
  });
  if (!problem.empty()) throw py::value_error("invalid CSR matrix: " + problem);
  return x;
}

// The targets of a batch of n rows: int64 labels (n,) for softmax/sigmoid, (n, n_L) of T for
// regression and multilabel; and sample weights (n,) or None.
template <class T>
void batch_targets(Batch<T>* batch, const NetworkShape& shape, const py::array& y,
                   const py::object& sample_weight, py::ssize_t n) {
  if (takes_targets(shape.output)) {
    require_shape(y, "targets", {n, static_cast<py::ssize_t>(shape.sizes.back())});
    batch->targets = contiguous<T>(y, "targets");
  } else {
    batch->labels = labels_view(y, n);
  }
  batch->weights = weights_view<T>(sample_weight, n);
}

// The Python side of Trainer<T>: validates and keeps alive every array the engine points into,
// and the optimizer.
template <class T>
class PyTrainer {
 public:
  PyTrainer(py::list weights, py::list biases, const std::string& activation,
            const std::string& output, py::object optimizer, double alpha, py::ssize_t max_batch,
            bool sparse_input, bool lazy_sparse_updates, const std::string& precision)
      : keep_alive_(py::make_tuple(weights, biases, optimizer)) {
    NetworkArgs<T> net = network_args<T>(weights, biases, activation, output, true);
    if (max_batch < 1) throw py::value_error("max_batch must be >= 1");
    if (!(alpha >= 0.0)) throw py::value_error("alpha must be >= 0");
    Optimizer& rule = optimizer.cast<Optimizer&>();
    const py::ssize_t n_layers = static_cast<py::ssize_t>(weights.size());
    std::vector<std::vector<index_t>> shapes;
    for (py::ssize_t i = 0; i < 2 * n_layers; ++i)
      shapes.push_back(shape_of(py::array(i < n_layers ? weights[i] : biases[i - n_layers])));
    if (!rule.bound() || rule.dtype() != dtype_of<T>() || rule.shapes() != shapes)
      throw py::value_error("the optimizer's state does not match the parameters (bind it first)");
    n_features_ = net.shape.sizes[0];
    n_outputs_ = net.shape.sizes.back();
    shape_ = net.shape;
    TrainerConfig cfg;
    cfg.shape = net.shape;
    cfg.alpha = alpha;
    cfg.sparse_input = sparse_input;
    cfg.lazy_sparse_updates = lazy_sparse_updates;
    cfg.precision = precision_arg<T>(precision);
    sparse_input_ = sparse_input;
    // The workspace is sized by max_batch: refuse what no memory holds before allocating.
    index_t widest = 0;
    for (const index_t s : cfg.shape.sizes) widest = std::max(widest, s);
    if (max_batch > (std::numeric_limits<index_t>::max() / 16) / std::max<index_t>(widest, 1) /
                        static_cast<index_t>(cfg.shape.sizes.size() + 4))
      throw py::value_error("max_batch " + std::to_string(max_batch) +
                            " needs a workspace larger than any memory");
    trainer_ = std::make_unique<Trainer<T>>(std::move(cfg), std::move(net.weights),
                                            std::move(net.biases), rule, max_batch);
  }

  void begin_epoch(py::ssize_t n_samples, bool shuffle, std::uint64_t seed) {
    if (n_samples < 1) throw py::value_error("an epoch needs at least one sample");
    if (static_cast<std::size_t>(n_samples) > std::vector<std::int64_t>().max_size())
      throw py::value_error("an epoch of " + std::to_string(n_samples) +
                            " samples is larger than any memory");
    trainer_->begin_epoch(n_samples, shuffle, seed);
    n_samples_ = n_samples;
  }

  // An epoch over the rows order[0], …, order[len - 1] of data of n_rows rows (run's X, y
  // and sample_weight have n_rows rows).
  void begin_epoch_with_order(
      const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& order,
      py::ssize_t n_rows) {
    if (order.ndim() != 1 || order.shape(0) < 1)
      throw py::value_error("order must be a 1-D array of at least one row index");
    const std::int64_t* rows = order.data();
    for (py::ssize_t i = 0; i < order.shape(0); ++i)
      if (rows[i] < 0 || rows[i] >= n_rows)
        throw py::value_error("order[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                              " is not a row of the " + std::to_string(n_rows) + " rows");
    trainer_->begin_epoch_with_order(rows, order.shape(0));
    n_samples_ = n_rows;
  }

  py::ssize_t gradient_elements() const { return trainer_->gradient_elements(); }
  py::ssize_t gradient_offset(py::ssize_t layer) const {
    if (layer < 0 || layer >= static_cast<py::ssize_t>(shape_.layers()))
      throw py::index_error("layer " + std::to_string(layer) + " out of range");
    return trainer_->gradient_offset(layer);
  }

  // (loss, rows, weight_sum, squares, fell_back) of the epoch's next batch; its gradient
  // into `grad` (gradient_elements(),) of the parameters' dtype. See Trainer::gradient_step.
  py::tuple gradient_step(const py::array& X, const py::array& y,
                          const py::object& sample_weight, py::ssize_t batch_size,
                          py::array grad, double scale) {
    typename Trainer<T>::Data data = dense_data(X, y, sample_weight, "gradient_step");
    if (batch_size < 1) throw py::value_error("batch_size must be >= 1");
    if (!std::isfinite(scale)) throw py::value_error("scale must be finite");
    T* buffer = gradient_buffer(grad);
    const StepGradient g =
        without_gil([&] { return trainer_->gradient_step(data, batch_size, buffer, scale); });
    return py::make_tuple(g.loss, g.rows, g.weight_sum, g.squares, g.fell_back);
  }

  // Whether the update from `grad` was applied (all finite); see Trainer::apply_gradients.
  bool apply_gradients(py::array grad, py::ssize_t penalty_rows) {
    if (penalty_rows < 1) throw py::value_error("penalty_rows must be >= 1");
    T* buffer = gradient_buffer(grad);
    return without_gil([&] { return trainer_->apply_gradients(buffer, penalty_rows); });
  }

  // Whether the update from Σ coefficients[s] · grads[s] of the flat elements [begin, end)
  // is finite; see Trainer::apply_gradient_sum (the step stays open: finish_gradient_sum).
  // grads: arrays of the gradient's shape and dtype, only read (other ranks' shared memory).
  bool apply_gradient_sum(const py::list& grads, const std::vector<double>& coefficients,
                          py::ssize_t penalty_rows, py::ssize_t begin, py::ssize_t end) {
    if (penalty_rows < 1) throw py::value_error("penalty_rows must be >= 1");
    check_flat_range(begin, end);
    if (grads.empty() || coefficients.size() != grads.size())
      throw py::value_error("apply_gradient_sum needs one coefficient per gradient, got " +
                            std::to_string(grads.size()) + " gradients and " +
                            std::to_string(coefficients.size()) + " coefficients");
    std::vector<py::array> arrays;  // (kept alive while the engine reads them)
    std::vector<const T*> sources;
    std::vector<T> scales;
    for (std::size_t s = 0; s < grads.size(); ++s) {
      const py::array& grad = arrays.emplace_back(grads[s].cast<py::array>());
      const std::string name = "grads[" + std::to_string(s) + "]";
      sources.push_back(contiguous<T>(grad, name.c_str()));
      check_flat_shape(grad, name);
      if (!std::isfinite(coefficients[s]))
        throw py::value_error("coefficients must be finite");
      scales.push_back(static_cast<T>(coefficients[s]));
    }
    return without_gil([&] {
      return trainer_->apply_gradient_sum(sources, scales, begin, end, penalty_rows);
    });
  }

  void finish_gradient_sum(bool keep, py::ssize_t begin, py::ssize_t end) {
    check_flat_range(begin, end);
    trainer_->finish_gradient_sum(keep, begin, end);
  }

  void set_flat_parameters(const py::array& flat, py::ssize_t begin, py::ssize_t end) {
    check_flat_range(begin, end);
    const T* values = contiguous<T>(flat, "flat");
    check_flat_shape(flat, "flat");
    without_gil([&] { trainer_->set_flat_parameters(values, begin, end); });
  }

  void get_flat_parameters(py::array& flat, py::ssize_t begin, py::ssize_t end) const {
    check_flat_range(begin, end);
    T* values = writable_contiguous<T>(flat, "flat");
    check_flat_shape(flat, "flat");
    without_gil([&] { trainer_->get_flat_parameters(values, begin, end); });
  }

  // y: int64 labels (n,) for classification, or targets (n, n_outputs) of the parameters'
  // dtype for regression; sample_weight: None or (n,) of the parameters' dtype.
  StepsResult run(const py::array& X, const py::array& y, const py::object& sample_weight,
                  py::ssize_t batch_size, py::ssize_t max_steps) {
    typename Trainer<T>::Data data = dense_data(X, y, sample_weight, "run");
    if (batch_size < 1 || max_steps < 1)
      throw py::value_error("batch_size and max_steps must be >= 1");
    return without_gil([&] { return trainer_->run(data, batch_size, max_steps); });
  }

  // X as a CSR matrix (n_samples of the epoch, n_features): see csr_view.
  // min_seconds: see Trainer::run.
  StepsResult run_sparse(const py::array& indptr, const py::array& indices,
                         const py::array& values, const py::array& y,
                         const py::object& sample_weight, py::ssize_t batch_size,
                         py::ssize_t max_steps, double min_seconds) {
    if (n_samples_ < 1) throw py::value_error("call begin_epoch before run_sparse");
    if (!sparse_input_) throw py::value_error("this trainer takes dense input: use run");
    const SparseRows<T> x = csr_view<T>(indptr, indices, values, n_samples_, n_features_);
    typename Trainer<T>::Data data;
    data.indptr = x.indptr;
    data.indices = x.indices;
    data.values = x.values;
    if (!(min_seconds >= 0.0)) throw py::value_error("min_seconds must be >= 0");
    add_targets(&data, y, sample_weight);
    if (batch_size < 1 || max_steps < 1)
      throw py::value_error("batch_size and max_steps must be >= 1");
    return without_gil(
        [&] { return trainer_->run(data, batch_size, max_steps, min_seconds); });
  }

 private:
  // The epoch's dense data for `caller` (run, gradient_step): X, targets and weights checked.
  typename Trainer<T>::Data dense_data(const py::array& X, const py::array& y,
                                       const py::object& sample_weight, const char* caller) {
    if (n_samples_ < 1)
      throw py::value_error(std::string("call begin_epoch before ") + caller);
    if (sparse_input_)
      throw py::value_error("this trainer takes sparse input: use run_sparse");
    const StridedMatrix<T> xs = strided<T>(X, "X");
    if (xs.col_stride != 1 || X.shape(0) != n_samples_ || X.shape(1) != n_features_)
      throw py::value_error("X must be (n_samples of the epoch, " + std::to_string(n_features_) +
                            ") with contiguous rows, got shape " + shape_str(X));
    typename Trainer<T>::Data data;
    data.X = xs.data;
    data.ldx = xs.row_stride;
    add_targets(&data, y, sample_weight);
    return data;
  }

  // The targets and weights of the epoch's n_samples rows, checked, into data.
  void add_targets(typename Trainer<T>::Data* data, const py::array& y,
                   const py::object& sample_weight) {
    Batch<T> targets;
    batch_targets<T>(&targets, shape_, y, sample_weight, n_samples_);
    data->labels = targets.labels;
    data->targets = targets.targets;
    data->weights = targets.weights;
  }

  void check_flat_range(py::ssize_t begin, py::ssize_t end) const {
    const py::ssize_t elements = trainer_->gradient_elements();
    if (!(0 <= begin && begin <= end && end <= elements))
      throw py::value_error("need 0 <= begin <= end <= " + std::to_string(elements) + ", got " +
                            std::to_string(begin) + ", " + std::to_string(end));
  }

  void check_flat_shape(const py::array& a, const std::string& name) const {
    const py::ssize_t elements = trainer_->gradient_elements();
    if (a.ndim() != 1 || a.shape(0) != elements)
      throw py::value_error(name + " must have shape (" + std::to_string(elements) + ",), got " +
                            shape_str(a));
  }

  T* gradient_buffer(py::array& grad) {
    T* buffer = writable_contiguous<T>(grad, "grad");
    check_flat_shape(grad, "grad");
    return buffer;
  }

  bool sparse_input_ = false;
  py::tuple keep_alive_;
  std::unique_ptr<Trainer<T>> trainer_;
  NetworkShape shape_;
  py::ssize_t n_samples_ = 0, n_features_ = 0, n_outputs_ = 0;
};

template <class T>
void bind_trainer(py::module_& m, const char* name) {
  py::class_<PyTrainer<T>>(m, name)
      .def(py::init<py::list, py::list, const std::string&, const std::string&, py::object,
                    double, py::ssize_t, bool, bool, const std::string&>(),
           py::arg("weights"), py::arg("biases"), py::arg("activation"), py::arg("output"),
           py::arg("optimizer"), py::arg("alpha"), py::arg("max_batch"),
           py::arg("sparse_input") = false, py::arg("lazy_sparse_updates") = false,
           py::arg("precision") = "float32")
      .def("begin_epoch", &PyTrainer<T>::begin_epoch, py::arg("n_samples"), py::arg("shuffle"),
           py::arg("seed"))
      .def("begin_epoch_with_order", &PyTrainer<T>::begin_epoch_with_order, py::arg("order"),
           py::arg("n_rows"))
      .def("gradient_elements", &PyTrainer<T>::gradient_elements)
      .def("gradient_offset", &PyTrainer<T>::gradient_offset, py::arg("layer"))
      .def("gradient_step", &PyTrainer<T>::gradient_step, py::arg("X"), py::arg("y"),
           py::arg("sample_weight"), py::arg("batch_size"), py::arg("grad"),
           py::arg("scale") = 1.0)
      .def("apply_gradients", &PyTrainer<T>::apply_gradients, py::arg("grad"),
           py::arg("penalty_rows"))
      .def("apply_gradient_sum", &PyTrainer<T>::apply_gradient_sum, py::arg("grads"),
           py::arg("coefficients"), py::arg("penalty_rows"), py::arg("begin"), py::arg("end"))
      .def("finish_gradient_sum", &PyTrainer<T>::finish_gradient_sum, py::arg("keep"),
           py::arg("begin"), py::arg("end"))
      .def("set_flat_parameters", &PyTrainer<T>::set_flat_parameters, py::arg("flat"),
           py::arg("begin"), py::arg("end"))
      .def("get_flat_parameters", &PyTrainer<T>::get_flat_parameters, py::arg("flat"),
           py::arg("begin"), py::arg("end"))
      .def("run", &PyTrainer<T>::run, py::arg("X"), py::arg("y"), py::arg("sample_weight"),
           py::arg("batch_size"), py::arg("max_steps"))
      .def("run_sparse", &PyTrainer<T>::run_sparse, py::arg("indptr"), py::arg("indices"),
           py::arg("values"), py::arg("y"), py::arg("sample_weight"), py::arg("batch_size"),
           py::arg("max_steps"), py::arg("min_seconds") = 0.0);
}

// Forward and backward of one batch: (data loss, weight gradients, bias gradients), for a
// batch whose input is set by set_input(batch, net) (dense X, or the rows of a CSR matrix).
template <class T, class SetInput>
py::tuple batch_gradients(const py::array& y, const py::object& sample_weight,
                          const NetworkArgs<T>& net, GemmPrecision precision,
                          SetInput&& set_input) {
  Batch<T> batch;
  set_input(&batch);
  const index_t B = batch.rows, L = net.shape.layers();
  batch_targets<T>(&batch, net.shape, y, sample_weight, B);
  GradientSink<T> sink;
  py::list grad_W, grad_b;
  for (index_t l = 0; l < L; ++l) {
    py::array_t<T> gw({net.shape.sizes[l + 1], net.shape.sizes[l]}), gb(net.shape.sizes[l + 1]);
    sink.grad_W.push_back(gw.mutable_data());
    sink.grad_b.push_back(gb.mutable_data());
    grad_W.append(gw);
    grad_b.append(gb);
  }
  const double loss = without_gil([&] {
    const PrecisionScope rounding(requested_gemm_precision(precision));
    static thread_local AlignedBuffer<T> block;
    const Workspace<T> ws = Network<T>::carve_workspace(
        block.reserve(static_cast<std::size_t>(
            Network<T>::workspace_elements(net.shape, B, Layout::rows))),
        net.shape, B, Layout::rows);
    return Network<T>(net.shape, net.weights.data(), net.biases.data())
        .template gradients<Layout::rows>(batch, ws, sink);
  });
  return py::make_tuple(loss, grad_W, grad_b);
}

py::tuple network_gradients_py(const py::array& X, const py::array& y,
                               const py::object& sample_weight, py::list weights,
                               py::list biases, const std::string& activation,
                               const std::string& output, const std::string& precision) {
  return with_float_dtype(X, "X", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const NetworkArgs<T> net = network_args<T>(weights, biases, activation, output, false);
    const GemmPrecision rounding = precision_arg<T>(precision);
    const StridedMatrix<T> xs = strided<T>(X, "X");
    if (X.shape(1) != net.shape.sizes[0] || X.shape(0) < 1)
      throw py::value_error("X must be (n >= 1, " + std::to_string(net.shape.sizes[0]) +
                            "), got shape " + shape_str(X));
    return batch_gradients<T>(y, sample_weight, net, rounding, [&](Batch<T>* batch) {
      batch->x = xs;
      batch->rows = X.shape(0);
    });
  });
}

// The same with X the CSR matrix (n_rows, n_features) of (indptr, indices, values).
py::tuple network_gradients_sparse_py(const py::array& indptr, const py::array& indices,
                                      const py::array& values, py::ssize_t n_features,
                                      const py::array& y, const py::object& sample_weight,
                                      py::list weights, py::list biases,
                                      const std::string& activation, const std::string& output,
                                      const std::string& precision) {
  return with_float_dtype(values, "values", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const NetworkArgs<T> net = network_args<T>(weights, biases, activation, output, false);
    const GemmPrecision rounding = precision_arg<T>(precision);
    if (n_features != net.shape.sizes[0])
      throw py::value_error("X has " + std::to_string(n_features) + " features, the network " +
                            std::to_string(net.shape.sizes[0]));
    const py::ssize_t n_rows = indptr.ndim() == 1 ? indptr.shape(0) - 1 : -1;
    if (n_rows < 1) throw py::value_error("X must have at least one row");
    const SparseRows<T> x = csr_view<T>(indptr, indices, values, n_rows, n_features);
    return batch_gradients<T>(y, sample_weight, net, rounding, [&](Batch<T>* batch) {
      batch->sparse = &x;
      batch->rows = n_rows;
    });
  });
}

py::array mlp_forward_sparse_py(const py::array& indptr, const py::array& indices,
                                const py::array& values, py::ssize_t n_features, py::list weights,
                                py::list biases, const std::string& activation,
                                const std::string& precision) {
  return with_float_dtype(values, "values", [&](auto tag) -> py::array {
    using T = decltype(tag);
    const NetworkArgs<T> net = network_args<T>(weights, biases, activation, "identity", false);
    const GemmPrecision rounding = precision_arg<T>(precision);
    if (n_features != net.shape.sizes[0])
      throw py::value_error("X has " + std::to_string(n_features) + " features, the network " +
                            std::to_string(net.shape.sizes[0]));
    const py::ssize_t B = indptr.ndim() == 1 ? indptr.shape(0) - 1 : -1;
    if (B < 0) throw py::value_error("indptr must be 1-D with n_rows + 1 entries");
    const SparseRows<T> x = csr_view<T>(indptr, indices, values, B, n_features);
    py::array_t<T> logits({static_cast<index_t>(B), net.shape.sizes.back()});
    T* out = logits.mutable_data();
    without_gil([&] {
      const PrecisionScope scope(requested_gemm_precision(rounding));
      mlp_forward_sparse(out, x, B, net.shape, net.weights.data(), net.biases.data());
    });
    return logits;
  });
}

// Whether X can be read in place by the one-call predict_proba paths (else they answer None
// and the caller's general path copies and validates it).
bool contiguous_and_aligned(const py::array& X) {
  return (X.flags() & py::array::c_style) &&
         (X.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
}

// PackedWeights<T>(weights, biases, activation): every W_l packed for the active ISA's GEMM
// kernels, with a copy of the biases (network.h). A snapshot: later changes to the arrays are
// not seen.
template <class T>
void bind_packed_weights(py::module_& m, const char* name) {
  auto cls = py::class_<PackedWeights<T>>(m, name,
                                          "the weights packed once for inference (network.h)");
  cls.def(py::init([](py::list weights, py::list biases, const std::string& activation) {
            const NetworkArgs<T> net =
                network_args<T>(weights, biases, activation, "identity", false);
            const T* const* w = net.weights.data();
            const T* const* b = net.biases.data();
            std::unique_ptr<PackedWeights<T>> packed;
            without_gil([&] { packed = std::make_unique<PackedWeights<T>>(net.shape, w, b); });
            return packed;
          }),
          py::arg("weights"), py::arg("biases"), py::arg("activation"))
      .def_property_readonly("nbytes", [](const PackedWeights<T>& p) {
        std::size_t bias_elements = 0;
        for (const std::vector<T>& b : p.bias_copies) bias_elements += b.size();
        return (p.elements + bias_elements) * sizeof(T);
      })
      .def_property_readonly("isa", [](const PackedWeights<T>& p) {
        return std::string(isa_name(p.isa));
      });
  if constexpr (std::is_same_v<T, float>) {
    // One row's logits, or their softmax, from the packed weights alone (X checked finite):
    // the single-sample forward / predict / predict_proba without the weights' lists to
    // convert and check (~1 µs of ~10 for the mnist-shaped net). None, computing nothing,
    // unless X is exactly what the model's validation would make of one sample (a
    // C-contiguous, aligned (1, n_0) float32 array) and the panels are AVX-512 ones of the
    // active ISA, or when X is not finite: the caller then takes the general path, whose
    // validation says what is wrong.
    cls.def("forward_row", [](const PackedWeights<float>& packed, const py::array& X,
                              bool softmax) -> py::object {
      if (X.ndim() != 2 || X.shape(0) != 1 || X.shape(1) != packed.shape.sizes[0] ||
          !py::isinstance<py::array_t<float>>(X) || !contiguous_and_aligned(X))
        return py::none();
      const index_t K = packed.shape.sizes.back();
      py::array_t<float> result({index_t{1}, K});
      float* out = result.mutable_data();
      const float* x = static_cast<const float*>(X.data());
      const int outcome = without_gil([&] {
        if (first_nonfinite(x, X.shape(1)) >= 0) return 0;
        if (!packed_forward_row(out, x, packed)) return 0;
        if (softmax && K > 0) softmax_forward(out, out, index_t{1}, K);
        return 1;
      });
      if (!outcome) return py::none();
      return std::move(result);
    }, py::arg("X"), py::arg("softmax"));
  }
}

// ---- quantized inference (quantized.h, gemm/int8.h) -------------------------------------------


template <class T>
const T* contiguous_of(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be a C-contiguous " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + " array");
  require_shape(a, name, shape);
  return static_cast<const T*>(a.data());
}

// A hidden layer from W_q (N,K) int8, s_w (N), b (N) float32 and, for static quantization,
// the input's (scale, zero point).
QuantizedLayer quantized_layer(const py::array& Wq, const py::array& scale, const py::array& bias,
                               const py::object& input) {
  require_ndim(Wq, "W_q", 2);
  const index_t N = Wq.shape(0), K = Wq.shape(1);
  const std::int8_t* w = contiguous_of<std::int8_t>(Wq, "W_q", {N, K});
  const float* s = contiguous_of<float>(scale, "weight scale", {N});
  const float* b = contiguous_of<float>(bias, "bias", {N});
  QuantizedLayer layer{PackedInt8Weights(w, K, N, K), std::vector<float>(s, s + N),
                       std::vector<float>(b, b + N), std::nullopt};
  if (!input.is_none()) {
    const auto [x_scale, zero] = input.cast<std::pair<float, int>>();
    if (!(x_scale > 0.0f) || !std::isfinite(x_scale) || zero < 0 || zero > 255)
      throw py::value_error("an input's scale must be finite and > 0, its zero point in [0, 255]");
    layer.input = QuantParams{x_scale, zero};
  }
  return layer;
}

std::unique_ptr<QuantizedNetwork> make_quantized_network(py::list hidden, const py::array& last_W,
                                                         const py::array& last_b,
                                                         const std::string& activation) {
  std::vector<QuantizedLayer> layers;
  std::vector<index_t> sizes;
  for (py::handle item : hidden) {
    const py::tuple t = py::reinterpret_borrow<py::tuple>(item);
    if (t.size() != 4) throw py::value_error("a hidden layer is (W_q, scale, bias, input)");
    layers.push_back(quantized_layer(t[0].cast<py::array>(), t[1].cast<py::array>(),
                                     t[2].cast<py::array>(), t[3]));
    const PackedInt8Weights& W = layers.back().weights;
    if (sizes.empty()) sizes.push_back(W.K);
    if (W.K != sizes.back()) throw py::value_error("the hidden layers' shapes do not chain");
    sizes.push_back(W.N);
  }
  require_ndim(last_W, "last W", 2);
  const index_t n_out = last_W.shape(0), n_in = last_W.shape(1);
  if (sizes.empty()) sizes.push_back(n_in);
  if (n_in != sizes.back()) throw py::value_error("the last layer's shape does not chain");
  sizes.push_back(n_out);
  const float* W = contiguous_of<float>(last_W, "last W", {n_out, n_in});
  const float* b = contiguous_of<float>(last_b, "last b", {n_out});
  return std::make_unique<QuantizedNetwork>(std::move(layers), W, b, sizes,
                                            parse_activation(activation));
}

// X (B, n_0) float32 as the quantized network reads it.
StridedMatrix<float> quantized_network_input(const QuantizedNetwork& net, const py::array& X) {
  const StridedMatrix<float> xs = strided<float>(X, "X");
  if (X.shape(1) != net.sizes().front())
    throw py::value_error("X has " + std::to_string(X.shape(1)) + " features, the network " +
                          std::to_string(net.sizes().front()));
  return xs;
}

void bind_quantized(py::module_& m, py::module_& testing) {
  py::class_<QuantizedNetwork>(m, "QuantizedNetwork",
                               "an MLP's int8 hidden layers and float32 last layer (quantized.h)")
      .def(py::init(&make_quantized_network), py::arg("hidden"), py::arg("last_W"),
           py::arg("last_b"), py::arg("activation"))
      .def("forward", [](const QuantizedNetwork& net, const py::array& X) {
        const StridedMatrix<float> xs = quantized_network_input(net, X);
        const index_t B = X.shape(0);
        py::array_t<float> logits({B, net.sizes().back()});
        float* out = logits.mutable_data();
        without_gil([&] { net.forward(out, xs, B); });
        return logits;
      }, py::arg("X"))
      // predict_proba of a softmax network in one call (as mlp_predict_proba): X checked
      // finite, the logits, softmax in place; None when X is not finite, not C-contiguous or
      // not aligned.
      .def("predict_proba", [](const QuantizedNetwork& net, const py::array& X) -> py::object {
        if (!contiguous_and_aligned(X)) return py::none();
        const StridedMatrix<float> xs = quantized_network_input(net, X);
        const index_t B = X.shape(0), K = net.sizes().back();
        py::array_t<float> probabilities({B, K});
        float* out = probabilities.mutable_data();
        const bool finite = without_gil([&] {
          if (!net.forward(out, xs, B, /*finite_input=*/true)) return false;
          if (K > 0) softmax_forward(out, out, B, K);
          return true;
        });
        if (!finite) return py::none();
        return std::move(probabilities);
      }, py::arg("X"))
      .def_property_readonly("nbytes", &QuantizedNetwork::nbytes);
  m.def("int8_path", [] { return std::string(int8_path_name(active_int8_path())); },
        "The int8 GEMM's path: 'portable', 'avxvnni' or 'avx512vnni'.");
  m.def("supported_int8_paths", [] {
    py::list out;
    for (Int8Path p : {Int8Path::portable, Int8Path::avxvnni, Int8Path::avx512vnni})
      if (int8_path_supported(p)) out.append(int8_path_name(p));
    return out;
  });
  m.def("int8_quant_params", [](float lo, float hi) {
    const QuantParams q = quant_params(lo, hi);
    return std::make_pair(q.scale, static_cast<int>(q.zero));
  }, py::arg("lo"), py::arg("hi"));
  // Returns the previous forced int8 path's name.
  testing.def("force_int8_path", [](const std::string& name) {
    try {
      return std::string(int8_path_name(testing_force_int8_path(parse_int8_path(name))));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("path"));
  // The int32 product X_q (M,K) uint8 · W_qᵀ, W_q (N,K) int8, through the active path.
  testing.def("int8_matmul", [](const py::array& Xq, const py::array& Wq) {
    require_ndim(Xq, "X_q", 2);
    require_ndim(Wq, "W_q", 2);
    const index_t M = Xq.shape(0), K = Xq.shape(1), N = Wq.shape(0);
    const std::uint8_t* x = contiguous_of<std::uint8_t>(Xq, "X_q", {M, K});
    const std::int8_t* w = contiguous_of<std::int8_t>(Wq, "W_q", {N, K});
    const PackedInt8Weights packed(w, K, N, K);
    std::vector<std::uint8_t> padded(static_cast<std::size_t>(M * packed.K4), 0);
    for (index_t i = 0; i < M; ++i) std::copy_n(x + i * K, K, padded.data() + i * packed.K4);
    py::array_t<std::int32_t> out({M, N});
    Int8Epilogue ep;
    ep.raw = out.mutable_data();
    ep.ld_raw = N;
    int8_gemm(padded.data(), packed.K4, M, packed, nullptr, 0, ep);
    return out;
  }, py::arg("X_q"), py::arg("W_q"));
  // quantize_rows of X (M,K) float32 with (scale, zero): ((M,K) uint8, whether X is finite).
  testing.def("quantize_rows", [](const py::array& X, float scale, int zero) {
    const StridedMatrix<float> xs = strided<float>(X, "X");
    const index_t M = X.shape(0), K = X.shape(1);
    py::array_t<std::uint8_t> out({M, K});
    const bool finite = quantize_rows(out.mutable_data(), K, xs.data, xs.row_stride,
                                      xs.col_stride, M, K, QuantParams{scale, zero});
    return py::make_tuple(out, finite);
  }, py::arg("X"), py::arg("scale"), py::arg("zero"));
  // quantize_rows_dynamic of X (M,K) float32, each row's range its own (ranges None) or
  // ranges (M,2) float32: ((M,K) uint8, scales (M) float32, zero points (M) int32, whether
  // each row is not finite (M) bool).
  testing.def("quantize_rows_dynamic", [](const py::array& X, const py::object& ranges) {
    const StridedMatrix<float> xs = strided<float>(X, "X");
    const index_t M = X.shape(0), K = X.shape(1);
    const float* given = nullptr;
    if (!ranges.is_none())
      given = contiguous_of<float>(ranges.cast<py::array>(), "ranges", {M, 2});
    py::array_t<std::uint8_t> out({M, K});
    py::array_t<float> scale(M);
    py::array_t<std::int32_t> zero(M);
    py::array_t<bool> nonfinite(M);
    std::fill_n(nonfinite.mutable_data(), M, false);
    quantize_rows_dynamic(out.mutable_data(), K, xs.data, xs.row_stride, xs.col_stride, M, K,
                          given, scale.mutable_data(), zero.mutable_data(),
                          reinterpret_cast<std::uint8_t*>(nonfinite.mutable_data()));
    return py::make_tuple(out, scale, zero, nonfinite);
  }, py::arg("X"), py::arg("ranges"));
  // tensor_range of X (M,K) float32: (lo, hi, has_nan).
  testing.def("tensor_range", [](const py::array& X) {
    const StridedMatrix<float> xs = strided<float>(X, "X");
    float lo, hi;
    bool has_nan;
    tensor_range(xs.data, xs.row_stride, xs.col_stride, X.shape(0), X.shape(1), &lo, &hi,
                 &has_nan);
    return py::make_tuple(lo, hi, has_nan);
  }, py::arg("X"));
}

// The logits of X (B, F) through the network; with `probabilities` (predict_proba of a
// softmax network in one call, what a single-sample prediction's latency is made of), X is
// first checked finite and the logits become softmax(logits) in place: None instead when X
// is not finite, not C-contiguous or not aligned, for the caller's full validation to say
// where (or to copy it).
py::object mlp_forward_impl(const py::array& X, py::list weights, py::list biases,
                            const std::string& activation, const std::string& precision,
                            const py::object& packed_object, bool probabilities) {
  if (probabilities && !contiguous_and_aligned(X)) return py::none();
  return with_float_dtype(X, "X", [&](auto tag) -> py::object {
    using T = decltype(tag);
    // The output kind does not change the logits.
    const NetworkArgs<T> net = network_args<T>(weights, biases, activation, "identity", false);
    const GemmPrecision rounding = precision_arg<T>(precision);
    const StridedMatrix<T> xs = strided<T>(X, "X");
    if (X.shape(1) != net.shape.sizes[0])
      throw py::value_error("X has " + std::to_string(X.shape(1)) + " features, the network " +
                            std::to_string(net.shape.sizes[0]));
    const index_t B = X.shape(0);
    const PackedWeights<T>* packed = nullptr;
    if (!packed_object.is_none()) {
      if (!py::isinstance<PackedWeights<T>>(packed_object))
        throw py::type_error("packed must be the PackedWeights of the weights' dtype");
      packed = packed_object.cast<const PackedWeights<T>*>();
      if (packed->shape.sizes != net.shape.sizes)
        throw py::value_error("packed was built for other layer sizes");
      // The panels are float32 products' (a bfloat16 product packs its own operands).
      if (rounding == GemmPrecision::bfloat16) packed = nullptr;
    }
    const index_t K = net.shape.sizes.back();
    py::array_t<T> logits({B, K});
    T* out = logits.mutable_data();
    const bool finite = without_gil([&] {
      if (probabilities && first_nonfinite(xs.data, B * X.shape(1)) >= 0) return false;
      const PrecisionScope scope(requested_gemm_precision(rounding));
      mlp_forward(out, xs, B, net.shape, net.weights.data(), net.biases.data(), packed);
      if (probabilities && K > 0) softmax_forward(out, out, B, K);
      return true;
    });
    if (!finite) return py::none();
    return std::move(logits);
  });
}

py::object mlp_forward_py(const py::array& X, py::list weights, py::list biases,
                          const std::string& activation, const std::string& precision,
                          const py::object& packed_object) {
  return mlp_forward_impl(X, weights, biases, activation, precision, packed_object, false);
}

py::object mlp_predict_proba_py(const py::array& X, py::list weights, py::list biases,
                                const std::string& activation, const std::string& precision,
                                const py::object& packed_object) {
  return mlp_forward_impl(X, weights, biases, activation, precision, packed_object, true);
}

}  // namespace

// A C interface to the thread count, exported from the module: threadpoolctl finds fastmlp's
// pool among the loaded libraries by these symbols (fastmlp._threadpool). The pybind11 build
// hides every other symbol.
extern "C" {
__attribute__((visibility("default"))) int fastmlp_get_num_threads() {
  return fastmlp::get_num_threads();
}
// Returns 0, or -1 if n is out of range (1 ≤ n ≤ 4 × the available CPUs).
__attribute__((visibility("default"))) int fastmlp_set_num_threads(int n) {
  try {
    fastmlp::set_num_threads(n);
    return 0;
  } catch (const std::exception&) {
    return -1;
  }
}
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastmlp's C++ kernels (use fastmlp.ops, which validates input)";
  m.attr("__version__") = FASTMLP_VERSION;
  py::tuple activation_names(kActivationCount);
  for (int i = 0; i < kActivationCount; ++i) activation_names[i] = kActivationNames[i];
  m.attr("ACTIVATIONS") = activation_names;
  init_isa();  // FASTMLP_ISA errors surface as an ImportError here, not mid-computation.
  cache_sizes();  // and FASTMLP_CACHE_SIZES errors

  m.def("isa", [] { return std::string(isa_name(active_isa())); },
        "The SIMD flavour the kernels use: 'generic', 'avx2' or 'avx512'.");
  m.def("supported_isas", [] {
    py::list out;
    for (Isa i : {Isa::generic, Isa::avx2, Isa::avx512})
      if (isa_supported(i)) out.append(isa_name(i));
    return out;
  });
  m.def("bf16_path", [] { return std::string(bf16_path_name(active_bf16_path())); },
        "The bf16 GEMM's path: 'portable' or 'avx512bf16'.");
  m.def("bf16_gemm_config", [] {
    const Bf16Kernels k = active_bf16_kernels();
    py::dict d;
    d["MR"] = k.MR;
    d["NR"] = k.NR;
    d["MC"] = k.MC;
    d["KC"] = k.KC;
    d["NC"] = k.NC;
    return d;
  });
  m.def("supported_bf16_paths", [] {
    py::list out;
    out.append(bf16_path_name(Bf16Path::portable));
    if (avx512bf16_supported()) out.append(bf16_path_name(Bf16Path::avx512bf16));
    return out;
  });
  m.def("set_isa", [](const std::string& name) {
    try {
      set_active_isa(parse_isa(name));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  });

  // Threads. Asking how many starts the pool, so the answer is what really runs.
  m.def("get_num_threads", [] {
    const int n = without_gil_unchecked([] { return start_threads(); });
    warn_thread_problems();
    return n;
  });
  m.def("default_num_threads", &default_num_threads);
  m.def("available_cpus", &available_cpus);
  m.def("max_num_threads", &max_num_threads);
  m.def("set_num_threads", [](int n) {
    without_gil([&] { set_num_threads(n); });
  }, py::arg("n"));
  m.def("cost_model", [](const std::string& dtype) {
    auto describe = [](const GemmCostModel& c) {
      py::dict d;
      d["flops_per_second"] = c.flops_per_second;
      d["region_seconds"] = c.region_seconds;
      d["threads"] = c.threads;
      d["risk_factor"] = kParallelRiskFactor;
      return d;
    };
    if (dtype == "float32") return describe(without_gil([] { return gemm_cost_model<float>(); }));
    if (dtype == "float64") return describe(without_gil([] { return gemm_cost_model<double>(); }));
    throw py::value_error("dtype must be 'float32' or 'float64', got '" + dtype + "'");
  }, py::arg("dtype") = "float32");

  // Test hooks (fastmlp._testing wraps them): not part of the API. Also importable as
  // fastmlp._core._testing, so that stubtest checks them against _core/_testing.pyi.
  py::module_ testing = m.def_submodule("_testing", "hooks for fastmlp's own tests");
  py::module_::import("sys").attr("modules")[testing.attr("__name__")] = testing;
  testing.def("stall_workers", [](int count) { without_gil([&] { testing_stall_workers(count); }); },
              py::arg("count"));
  testing.def("check_regions", [](int regions, int tasks) {
    if (regions < 1 || tasks < 1) throw py::value_error("regions and tasks must be >= 1");
    return without_gil([&] { return testing_check_regions(regions, tasks); });
  }, py::arg("regions"), py::arg("tasks"));
  testing.def("force_split", &testing_force_split, py::arg("force"));
  testing.def("disable_update_proof", &testing_disable_update_proof, py::arg("disable"));
  // Returns (RuntimeError message, tasks that ran) of a region whose task `failing` throws.
  testing.def("failing_region", [](int tasks, int failing) -> py::tuple {
    if (tasks < 1) throw py::value_error("tasks must be >= 1");
    int ran = -1;
    try {
      without_gil([&] { testing_failing_region(tasks, failing, &ran); });
    } catch (const std::runtime_error& e) {
      return py::make_tuple(std::string(e.what()), ran);
    }
    return py::make_tuple(py::none(), ran);
  }, py::arg("tasks"), py::arg("failing"));
  testing.def("slow_regions", &testing_slow_regions, py::arg("factor"));
  // The addresses of an optimizer's state arrays (their alignment is tested).
  testing.def("optimizer_state_addresses", [](const Optimizer& o) {
    std::vector<std::uintptr_t> out;
    for (int i = 0; i < static_cast<int>(o.shapes().size()); ++i)
      for (int k = 0; k < static_cast<int>(o.state_names().size()); ++k)
        out.push_back(reinterpret_cast<std::uintptr_t>(o.state(i, k)));
    return out;
  }, py::arg("optimizer"));
  // Returns the previous path's name.
  testing.def("force_gemm_path", [](const std::string& path) {
    return std::string(gemm_path_name(testing_force_gemm_path(parse_gemm_path(path))));
  }, py::arg("path"));
  // "automatic", "rows" or "features"; returns the previous choice.
  testing.def("force_layout", [](const std::string& name) {
    const char* names[] = {"automatic", "rows", "features"};
    for (int i = 0; i < 3; ++i)
      if (name == names[i]) {
        const LayoutChoice previous = testing_force_layout(static_cast<LayoutChoice>(i));
        return std::string(names[static_cast<int>(previous)]);
      }
    throw py::value_error("layout must be 'automatic', 'rows' or 'features', got '" + name + "'");
  }, py::arg("layout"));
  bind_quantized(m, testing);
  // Returns the previous forced bf16 path's name.
  testing.def("force_bf16_path", [](const std::string& name) {
    try {
      return std::string(bf16_path_name(testing_force_bf16_path(parse_bf16_path(name))));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("path"));
  // The calling thread's GemmPrecision ("float32" or "bfloat16"); returns the previous one.
  testing.def("set_gemm_precision", [](const std::string& name) {
    constexpr std::pair<GemmPrecision, const char*> names[] = {
        {GemmPrecision::float32, "float32"}, {GemmPrecision::bfloat16, "bfloat16"}};
    for (const auto& [precision, precision_name] : names)
      if (name == precision_name) {
        const GemmPrecision previous = testing_set_gemm_precision(precision);
        return std::string(previous == GemmPrecision::float32 ? "float32" : "bfloat16");
      }
    throw py::value_error("GEMM precision must be 'float32' or 'bfloat16', got '" + name + "'");
  }, py::arg("precision"));
  // The bf16 values the bf16 GEMM multiplies in place of x's (float32, C-contiguous).
  testing.def("round_bf16", [](const py::array& x) {
    const float* in = contiguous<float>(x, "x");
    py::array_t<float> out(x.request().shape);
    round_to_bf16(out.mutable_data(), in, static_cast<index_t>(x.size()));
    return out;
  }, py::arg("x"));
  testing.def("workspace_allocations", [] { return g_workspace_allocations.load(); });
  testing.def("matmul_via_consumer", &matmul_via_consumer, py::arg("a"), py::arg("b"),
              py::arg("trans_a"), py::arg("trans_b"));
  testing.def("matmul_with_epilogue", &matmul_with_epilogue, py::arg("a"), py::arg("b"),
              py::arg("trans_a"), py::arg("trans_b"), py::arg("c"), py::arg("accumulate"),
              py::arg("bias"), py::arg("relu"), py::arg("mask"));


  m.def("cache_sizes", [] {
    const CacheSizes& c = cache_sizes();
    py::dict d;
    d["l1d"] = c.l1d;
    d["l2"] = c.l2;
    d["l3"] = c.l3;
    d["l1d_ways"] = c.l1d_ways;
    d["l2_ways"] = c.l2_ways;
    d["l3_ways"] = c.l3_ways;
    d["l3_sharing"] = c.l3_sharing;
    d["line"] = c.line;
    d["source"] = c.source;
    return d;
  }, "The data caches the GEMM's blocks are derived from (bytes): detected, or as "
     "FASTMLP_CACHE_SIZES overrides them.");
  m.def("measure_float32_peak", [](double seconds) -> py::object {
    const auto measure = isa_context(active_isa()).measure_float32_peak;
    if (!measure) return py::none();
    double flops;
    {
      py::gil_scoped_release release;
      flops = measure(seconds);
    }
    return py::float_(flops);
  }, py::arg("seconds"),
     "The active ISA's float32 FMA peak of one core, FLOP/s: independent register-only FMA "
     "chains timed for about `seconds`, the fastest chunk; None for the portable code.");
  m.def("gemm_config", [](const std::string& dtype) {
    auto describe = [](const auto& k) {
      py::dict d;
      d["MR"] = k.MR;
      d["NR"] = k.NR;
      d["MC"] = k.MC;
      d["KC"] = k.KC;
      d["NC"] = k.NC;
      d["row_NR"] = k.row_NR;
      return d;
    };
    if (dtype == "float32") return describe(active_gemm_context<float>());
    if (dtype == "float64") return describe(active_gemm_context<double>());
    throw py::value_error("dtype must be 'float32' or 'float64', got '" + dtype + "'");
  });
  bind_optimizers(m);
  py::class_<StepsResult>(m, "StepsResult", "what one call of a trainer's run did")
      .def_readonly("data_loss_sum", &StepsResult::data_loss_sum)
      .def_readonly("penalty_sum", &StepsResult::penalty_sum)
      .def_readonly("samples", &StepsResult::samples)
      .def_readonly("steps", &StepsResult::steps)
      .def_readonly("nonfinite", &StepsResult::nonfinite)
      .def_readonly("epoch_done", &StepsResult::epoch_done)
      .def_readonly("unsaved_steps", &StepsResult::unsaved_steps)
      .def_readonly("fell_back", &StepsResult::fell_back)
      .def_readonly("wall_to_cpu", &StepsResult::wall_to_cpu)
      .def_readonly("sync_seconds", &StepsResult::sync_seconds);
  bind_trainer<float>(m, "TrainerFloat32");
  bind_trainer<double>(m, "TrainerFloat64");
  m.def("mlp_forward", &mlp_forward_py, py::arg("X"), py::arg("weights"), py::arg("biases"),
        py::arg("activation"), py::arg("precision") = "float32", py::arg("packed") = py::none());
  m.def("mlp_predict_proba", &mlp_predict_proba_py, py::arg("X"), py::arg("weights"),
        py::arg("biases"), py::arg("activation"), py::arg("precision") = "float32",
        py::arg("packed") = py::none());
  bind_packed_weights<float>(m, "PackedWeightsFloat32");
  bind_packed_weights<double>(m, "PackedWeightsFloat64");
  m.def("network_gradients", &network_gradients_py, py::arg("X"), py::arg("y"),
        py::arg("sample_weight"), py::arg("weights"), py::arg("biases"), py::arg("activation"),
        py::arg("output"), py::arg("precision") = "float32");
  m.def("mlp_forward_sparse", &mlp_forward_sparse_py, py::arg("indptr"), py::arg("indices"),
        py::arg("values"), py::arg("n_features"), py::arg("weights"), py::arg("biases"),
        py::arg("activation"), py::arg("precision") = "float32");
  m.def("network_gradients_sparse", &network_gradients_sparse_py, py::arg("indptr"),
        py::arg("indices"), py::arg("values"), py::arg("n_features"), py::arg("y"),
        py::arg("sample_weight"), py::arg("weights"), py::arg("biases"), py::arg("activation"),
        py::arg("output"), py::arg("precision") = "float32");
  // out (cols, rows) ← the transpose of RandomState.uniform(low, high, (rows, cols)) drawn
  // from the MT19937 state (key (624,) uint32, updated in place; pos): returns the new pos.
  m.def("legacy_uniform_transposed", [](py::array key, int pos, py::array out, double low,
                                        double high) {
    if (!has_dtype<std::uint32_t>(key)) throw py::type_error("key must be uint32");
    require_shape(key, "key", {624});
    if (pos < 0 || pos > 624) throw py::value_error("pos must be in [0, 624]");
    if (!(std::isfinite(low) && std::isfinite(high) && high >= low))
      throw py::value_error("low and high must be finite, low <= high");
    std::uint32_t* words = writable_contiguous<std::uint32_t>(key, "key");
    require_ndim(out, "out", 2);
    const index_t cols = out.shape(0), rows = out.shape(1);
    const Mt19937State state{words, pos};
    return with_float_dtype(out, "out", [&](auto tag) -> int {
      using T = decltype(tag);
      T* target = writable_contiguous<T>(out, "out");
      return without_gil(
          [&] { return legacy_uniform_transposed(state, target, rows, cols, low, high); });
    });
  }, py::arg("key"), py::arg("pos"), py::arg("out"), py::arg("low"), py::arg("high"));
  m.def("shuffled_indices", [](py::ssize_t n, std::uint64_t seed) {
    if (n < 0) throw py::value_error("n must be >= 0");
    py::array_t<std::int64_t> out(n);
    shuffled_indices(out.mutable_data(), n, seed);
    return out;
  }, py::arg("n"), py::arg("seed"));
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("trans_a"), py::arg("trans_b"));
  m.def("matmul_bf16", &matmul_bf16, py::arg("a"), py::arg("b"), py::arg("trans_a"),
        py::arg("trans_b"));
  m.def("dense_forward", &dense_forward_py, py::arg("x"), py::arg("W"), py::arg("b"),
        py::arg("activation"));
  m.def("dense_backward", &dense_backward_py, py::arg("x"), py::arg("W"), py::arg("out"),
        py::arg("grad_out"), py::arg("activation"), py::arg("need_grad_x") = true);
  // The flat index of the first non-finite value of an aligned C-contiguous float array, or -1.
  m.def("first_nonfinite", [](const py::array& a) -> py::ssize_t {
    if (!contiguous_and_aligned(a))
      throw py::value_error("first_nonfinite needs an aligned C-contiguous array");
    return with_float_dtype(a, "a", [&](auto zero) {
      using T = decltype(zero);
      const T* data = static_cast<const T*>(a.data());
      const index_t n = a.size();
      return without_gil([&] { return first_nonfinite(data, n); });
    });
  }, py::arg("a"));
  m.def("relu", [](const py::array& x) {
    return elementwise(x, "x", [](auto* o, const auto* i, index_t n) { relu_forward(o, i, n); });
  });
  m.def("sigmoid", [](const py::array& x) {
    return elementwise(x, "x", [](auto* o, const auto* i, index_t n) { sigmoid_forward(o, i, n); });
  });
  m.def("relu_grad", &relu_grad_py, py::arg("grad_out"), py::arg("out"));
  m.def("softmax", &softmax_py, py::arg("x"));
  m.def("softmax_nll", &softmax_nll_py, py::arg("logits"), py::arg("labels"),
        py::arg("sample_weight") = py::none());
  m.def("sigmoid_bce", &sigmoid_bce_py, py::arg("logits"), py::arg("labels"),
        py::arg("sample_weight") = py::none());
  m.def("squared_error",
        [](const py::array& pred, const py::array& target, const py::object& weights) {
          return target_loss_py<SquaredError>(pred, target, weights, "pred");
        },
        py::arg("pred"), py::arg("target"), py::arg("sample_weight") = py::none());
  m.def("sigmoid_bce_multi",
        [](const py::array& logits, const py::array& target, const py::object& weights) {
          return target_loss_py<SigmoidBceMulti>(logits, target, weights, "logits");
        },
        py::arg("logits"), py::arg("target"), py::arg("sample_weight") = py::none());
  m.def("poisson_deviance",
        [](const py::array& raw, const py::array& target, const py::object& weights) {
          return target_loss_py<PoissonDeviance>(raw, target, weights, "raw");
        },
        py::arg("raw"), py::arg("target"), py::arg("sample_weight") = py::none());
}
