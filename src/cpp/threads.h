// fastmlp's own persistent thread pool (std::thread, no OpenMP).
//
// Why not OpenMP: a wheel that bundles a second OpenMP runtime next to NumPy's or PyTorch's is
// a known source of crashes ("OMP: Error #15"), and libgomp's pool hangs in a child after
// fork(). This pool is re-created in a forked child on first use.
#pragma once

#include <type_traits>
#include <utility>

namespace fastmlp {

// The number of cores this process may use: the CPU affinity mask, capped by a cgroup CPU
// quota (cgroup v2 cpu.max or v1 cfs_quota_us), overridden by FASTMLP_NUM_THREADS if set.
int default_num_threads();

int get_num_threads();
// n ≥ 1; takes effect for the next parallel region. Throws std::invalid_argument for n < 1.
void set_num_threads(int n);

// A non-owning reference to a callable void(int): unlike std::function it never allocates, so
// a parallel region costs no heap allocation (the training step allocates nothing).
class TaskRef {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, TaskRef>>>
  TaskRef(F&& f)  // NOLINT: implicit, like std::function
      : object_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* object, int i) { (*static_cast<std::remove_reference_t<F>*>(object))(i); }) {}
  void operator()(int i) const { call_(object_, i); }

 private:
  void* object_;
  void (*call_)(void*, int);
};

// Runs task(0) … task(n_tasks - 1), spread over the pool's threads and the calling thread,
// and returns when all have finished (rethrowing the first exception a task threw).
// Tasks run inline, one after another, when the pool is busy with another caller's region or
// when called from inside a task: never a deadlock, never oversubscription.
void parallel_for(int n_tasks, TaskRef task);

}  // namespace fastmlp
