// The Python bindings of fastmlp._core: the only file that includes pybind11.
//
// These functions are the thin, strict layer under fastmlp.ops / fastmlp.model, which give the
// friendly validation messages. Here every precondition that protects memory (dtype, ndim,
// shapes, strides, writeability, label range) is checked again, so no call from Python can
// crash the process; the GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>

#include "activations.h"
#include "checks.h"
#include "cpu.h"
#include "dense.h"
#include "gemm/context.h"
#include "gemm/gemm.h"
#include "loss.h"
#include "optim.h"
#include "threads.h"
#include "narrow.h"
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

py::tuple squared_error_py(const py::array& pred, const py::array& target,
                           const py::object& weights) {
  require_ndim(pred, "pred", 2);
  return with_float_dtype(pred, "pred", [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const T* pp = contiguous<T>(pred, "pred");
    const index_t N = pred.shape(0), K = pred.shape(1);
    require_shape(target, "target", {N, K});
    const T* tp = contiguous<T>(target, "target");
    const T* wp = weights_view<T>(weights, N);
    py::array_t<T> dpred({N, K});
    T* dp = dpred.mutable_data();
    const double loss = without_gil([&] { return squared_error(dp, pp, tp, wp, N, K); });
    return py::make_tuple(loss, dpred);
  });
}

template <class T>
index_t require_same_size(const py::array& param, std::initializer_list<const py::array*> others,
                          std::initializer_list<const char*> names) {
  auto name = names.begin();
  for (const py::array* other : others) {
    contiguous<T>(*other, *name);
    if (other->size() != param.size())
      throw py::value_error(std::string(*name) + " has " + std::to_string(other->size()) +
                            " elements but the parameter has " + std::to_string(param.size()));
    ++name;
  }
  return param.size();
}

void sgd_update_py(py::array& param, const py::array& grad, py::array& buf, double lr,
                   double momentum, double weight_decay, bool nesterov, bool first_step) {
  with_float_dtype(param, "param", [&](auto tag) {
    using T = decltype(tag);
    T* p = writable_contiguous<T>(param, "param");
    T* b = writable_contiguous<T>(buf, "momentum_buffer");
    const index_t n = require_same_size<T>(param, {&grad, &buf}, {"grad", "momentum_buffer"});
    const T* g = static_cast<const T*>(grad.data());
    py::gil_scoped_release release;
    sgd_update(p, g, b, n, lr, momentum, weight_decay, nesterov, first_step);
  });
}

void adam_update_py(py::array& param, const py::array& grad, py::array& exp_avg,
                    py::array& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                    double weight_decay, std::int64_t step) {
  if (step < 1) throw py::value_error("Adam step count must be >= 1");
  with_float_dtype(param, "param", [&](auto tag) {
    using T = decltype(tag);
    T* p = writable_contiguous<T>(param, "param");
    T* m = writable_contiguous<T>(exp_avg, "exp_avg");
    T* v = writable_contiguous<T>(exp_avg_sq, "exp_avg_sq");
    const index_t n = require_same_size<T>(param, {&grad, &exp_avg, &exp_avg_sq},
                                           {"grad", "exp_avg", "exp_avg_sq"});
    const T* g = static_cast<const T*>(grad.data());
    py::gil_scoped_release release;
    adam_update(p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
  });
}

// ---- the fused training engine ---------------------------------------------------------------

template <class T>
T* parameter_pointer(const py::handle& item, const std::string& name,
                     std::initializer_list<py::ssize_t> shape) {
  py::array a = py::reinterpret_borrow<py::array>(item);
  require_shape(a, name.c_str(), shape);
  return writable_contiguous<T>(a, name.c_str());
}

// The Python side of Trainer<T>: validates and keeps alive every array the engine points into.
template <class T>
class PyTrainer {
 public:
  PyTrainer(py::list weights, py::list biases, const std::string& activation,
            const std::string& output, py::dict optimizer, py::ssize_t max_batch)
      : keep_alive_(py::make_tuple(weights, biases, optimizer)) {
    TrainerConfig cfg;
    cfg.hidden = parse_activation(activation);
    if (output == "softmax") cfg.output = OutputKind::softmax;
    else if (output == "sigmoid") cfg.output = OutputKind::sigmoid;
    else if (output == "identity") cfg.output = OutputKind::identity;
    else throw py::value_error("output must be 'softmax', 'sigmoid' or 'identity'");
    const py::ssize_t n_layers = static_cast<py::ssize_t>(weights.size());
    if (n_layers < 1 || static_cast<py::ssize_t>(biases.size()) != n_layers)
      throw py::value_error("weights and biases must be non-empty lists of equal length");
    if (max_batch < 1) throw py::value_error("max_batch must be >= 1");
    TrainerParameters<T> params;
    for (py::ssize_t l = 0; l < n_layers; ++l) {
      py::array w = weights[l];
      require_ndim(w, "weight", 2);
      if (l == 0) cfg.sizes.push_back(w.shape(1));
      if (w.shape(1) != cfg.sizes.back())
        throw py::value_error("weights[" + std::to_string(l) + "] does not chain: its in-size " +
                              std::to_string(w.shape(1)) + " differs from the layer below's " +
                              std::to_string(cfg.sizes.back()));
      cfg.sizes.push_back(w.shape(0));
      params.weights.push_back(parameter_pointer<T>(weights[l], "weights[" + std::to_string(l) + "]",
                                                    {w.shape(0), w.shape(1)}));
      params.biases.push_back(parameter_pointer<T>(biases[l], "biases[" + std::to_string(l) + "]",
                                                   {w.shape(0)}));
    }
    if (cfg.output == OutputKind::sigmoid && cfg.sizes.back() != 1)
      throw py::value_error("a sigmoid output needs one logit");
    const std::string kind = optimizer["kind"].cast<std::string>();
    if (kind != "sgd" && kind != "adam") throw py::value_error("optimizer kind must be sgd or adam");
    cfg.adam = kind == "adam";
    cfg.lr = optimizer["lr"].cast<double>();
    cfg.alpha = optimizer.contains("alpha") ? optimizer["alpha"].cast<double>() : 0.0;
    cfg.weight_decay = optimizer["weight_decay"].cast<double>();
    if (cfg.adam) {
      cfg.beta1 = optimizer["beta1"].cast<double>();
      cfg.beta2 = optimizer["beta2"].cast<double>();
      cfg.eps = optimizer["eps"].cast<double>();
      params.optimizer_steps = optimizer["steps"].cast<std::int64_t>();
    } else {
      cfg.momentum = optimizer["momentum"].cast<double>();
      cfg.nesterov = optimizer["nesterov"].cast<bool>();
    }
    py::list state_a = optimizer["state_a"], state_b = optimizer["state_b"];
    py::list first_step = optimizer["first_step"];
    const py::ssize_t n_params = 2 * n_layers;
    if (static_cast<py::ssize_t>(state_a.size()) != n_params ||
        (cfg.adam && static_cast<py::ssize_t>(state_b.size()) != n_params) ||
        (!cfg.adam && static_cast<py::ssize_t>(first_step.size()) != n_params))
      throw py::value_error("optimizer state does not match the parameters");
    for (py::ssize_t i = 0; i < n_params; ++i) {
      const py::ssize_t l = i % n_layers;
      const bool is_weight = i < n_layers;
      const py::ssize_t out = cfg.sizes[l + 1], in = cfg.sizes[l];
      auto state_pointer = [&](const py::handle& item) {
        return is_weight ? parameter_pointer<T>(item, "optimizer state", {out, in})
                         : parameter_pointer<T>(item, "optimizer state", {out});
      };
      params.state_a.push_back(state_pointer(state_a[i]));
      if (cfg.adam) params.state_b.push_back(state_pointer(state_b[i]));
      else params.sgd_first_step.push_back(first_step[i].cast<bool>() ? 1 : 0);
    }
    n_features_ = cfg.sizes[0];
    n_outputs_ = cfg.sizes.back();
    regression_ = cfg.output == OutputKind::identity;
    trainer_ = std::make_unique<Trainer<T>>(std::move(cfg), std::move(params), max_batch);
  }

  void begin_epoch(py::ssize_t n_samples, bool shuffle, std::uint64_t seed) {
    if (n_samples < 1) throw py::value_error("an epoch needs at least one sample");
    trainer_->begin_epoch(n_samples, shuffle, seed);
    n_samples_ = n_samples;
  }

  // y: int64 labels (n,) for classification, or targets (n, n_outputs) of the parameters'
  // dtype for regression; sample_weight: None or (n,) of the parameters' dtype.
  py::dict run(const py::array& X, const py::array& y, const py::object& sample_weight,
               py::ssize_t batch_size, py::ssize_t max_steps) {
    const StridedMatrix<T> xs = strided<T>(X, "X");
    if (xs.col_stride != 1 || X.shape(0) != n_samples_ || X.shape(1) != n_features_)
      throw py::value_error("X must be (n_samples of the epoch, " + std::to_string(n_features_) +
                            ") with contiguous rows, got shape " + shape_str(X));
    typename Trainer<T>::Data data;
    data.X = xs.data;
    data.ldx = xs.row_stride;
    if (regression_) {
      require_shape(y, "targets", {n_samples_, n_outputs_});
      data.targets = contiguous<T>(y, "targets");
    } else {
      data.labels = labels_view(y, n_samples_);
    }
    data.weights = weights_view<T>(sample_weight, n_samples_);
    if (batch_size < 1 || max_steps < 1) throw py::value_error("batch_size and max_steps must be >= 1");
    const StepsResult r = without_gil([&] {
      StepsResult steps = trainer_->run(data, batch_size, max_steps);
      total_steps_ += steps.steps;  // counted here, so Python reads it even if interrupted
      return steps;
    });
    py::dict out;
    out["loss_sum"] = r.loss_sum;
    out["samples"] = r.samples;
    out["steps"] = r.steps;
    out["nonfinite"] = r.nonfinite;
    out["epoch_done"] = r.epoch_done;
    out["parallel_steps"] = r.parallel_steps;
    out["fell_back"] = r.fell_back;
    out["wall_to_cpu"] = r.wall_to_cpu;
    return out;
  }

  std::int64_t optimizer_steps() const { return trainer_->parameters().optimizer_steps; }
  std::int64_t total_steps() const { return total_steps_; }
  py::list sgd_first_step() const {
    py::list out;
    for (char f : trainer_->parameters().sgd_first_step) out.append(f != 0);
    return out;
  }

 private:
  py::tuple keep_alive_;
  std::unique_ptr<Trainer<T>> trainer_;
  py::ssize_t n_samples_ = 0, n_features_ = 0, n_outputs_ = 0;
  std::int64_t total_steps_ = 0;
  bool regression_ = false;
};

template <class T>
void bind_trainer(py::module_& m, const char* name) {
  py::class_<PyTrainer<T>>(m, name)
      .def(py::init<py::list, py::list, const std::string&, const std::string&, py::dict,
                    py::ssize_t>(),
           py::arg("weights"), py::arg("biases"), py::arg("activation"), py::arg("output"),
           py::arg("optimizer"), py::arg("max_batch"))
      .def("begin_epoch", &PyTrainer<T>::begin_epoch, py::arg("n_samples"), py::arg("shuffle"),
           py::arg("seed"))
      .def("run", &PyTrainer<T>::run, py::arg("X"), py::arg("y"), py::arg("sample_weight"),
           py::arg("batch_size"), py::arg("max_steps"))
      .def_property_readonly("optimizer_steps", &PyTrainer<T>::optimizer_steps)
      .def_property_readonly("total_steps", &PyTrainer<T>::total_steps)
      .def_property_readonly("sgd_first_step", &PyTrainer<T>::sgd_first_step);
}

py::array mlp_forward_py(const py::array& X, py::list weights, py::list biases,
                         const std::string& activation) {
  const Activation hidden = parse_activation(activation);
  return with_float_dtype(X, "X", [&](auto tag) -> py::array {
    using T = decltype(tag);
    const StridedMatrix<T> xs = strided<T>(X, "X");
    const py::ssize_t n_layers = static_cast<py::ssize_t>(weights.size());
    if (n_layers < 1 || static_cast<py::ssize_t>(biases.size()) != n_layers)
      throw py::value_error("weights and biases must be non-empty lists of equal length");
    std::vector<index_t> sizes{X.shape(1)};
    std::vector<const T*> w_ptrs, b_ptrs;
    for (py::ssize_t l = 0; l < n_layers; ++l) {
      py::array w = weights[l], b = biases[l];
      require_ndim(w, "weight", 2);
      require_shape(w, "weight", {w.shape(0), sizes.back()});
      require_shape(b, "bias", {w.shape(0)});
      w_ptrs.push_back(contiguous<T>(w, "weight"));
      b_ptrs.push_back(contiguous<T>(b, "bias"));
      sizes.push_back(w.shape(0));
    }
    py::array_t<T> logits({X.shape(0), static_cast<py::ssize_t>(sizes.back())});
    T* out = logits.mutable_data();
    const index_t B = X.shape(0);
    without_gil(
        [&] { mlp_forward(out, xs.data, xs.row_stride, xs.col_stride, B, sizes, w_ptrs, b_ptrs, hidden); });
    return logits;
  });
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

  m.def("isa", [] { return std::string(isa_name(active_isa())); },
        "The SIMD flavour the kernels use: 'generic', 'avx2' or 'avx512'.");
  m.def("supported_isas", [] {
    py::list out;
    for (Isa i : {Isa::generic, Isa::avx2, Isa::avx512})
      if (isa_supported(i)) out.append(isa_name(i));
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
  // Returns the previous path's name.
  testing.def("force_gemm_path", [](const std::string& path) {
    return std::string(gemm_path_name(testing_force_gemm_path(parse_gemm_path(path))));
  }, py::arg("path"));
  testing.def("set_narrow_max_width", &set_narrow_max_width, py::arg("width"));
  testing.def("workspace_allocations", [] { return g_workspace_allocations.load(); });
  testing.def("matmul_via_consumer", &matmul_via_consumer, py::arg("a"), py::arg("b"),
              py::arg("trans_a"), py::arg("trans_b"));


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
  bind_trainer<float>(m, "TrainerFloat32");
  bind_trainer<double>(m, "TrainerFloat64");
  m.def("mlp_forward", &mlp_forward_py, py::arg("X"), py::arg("weights"), py::arg("biases"),
        py::arg("activation"));
  m.def("shuffled_indices", [](py::ssize_t n, std::uint64_t seed) {
    if (n < 0) throw py::value_error("n must be >= 0");
    py::array_t<std::int64_t> out(n);
    shuffled_indices(out.mutable_data(), n, seed);
    return out;
  }, py::arg("n"), py::arg("seed"));
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("trans_a"), py::arg("trans_b"));
  m.def("dense_forward", &dense_forward_py, py::arg("x"), py::arg("W"), py::arg("b"),
        py::arg("activation"));
  m.def("dense_backward", &dense_backward_py, py::arg("x"), py::arg("W"), py::arg("out"),
        py::arg("grad_out"), py::arg("activation"), py::arg("need_grad_x") = true);
  // The flat index of the first non-finite value of a C-contiguous float array, or -1.
  m.def("first_nonfinite", [](const py::array& a) -> py::ssize_t {
    if (!(a.flags() & py::array::c_style))
      throw py::value_error("first_nonfinite needs a C-contiguous array");
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
  m.def("squared_error", &squared_error_py, py::arg("pred"), py::arg("target"),
        py::arg("sample_weight") = py::none());
  m.def("sgd_update", &sgd_update_py, py::arg("param"), py::arg("grad"),
        py::arg("momentum_buffer"), py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"),
        py::arg("nesterov"), py::arg("first_step"));
  m.def("adam_update", &adam_update_py, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"));

}
