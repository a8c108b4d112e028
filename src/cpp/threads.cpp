// The persistent thread pool (see threads.h).
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fastmlp {

namespace {

thread_local bool t_inside_task = false;

// How long an idle thread polls before it sleeps on a condition variable. Waking a sleeping
// thread costs tens to hundreds of microseconds on a virtual machine, as long as a whole
// mid-size product: without polling the caller finishes its own task, finds the other one
// unclaimed and runs it too (measured: no speed-up at all for 50-MFLOP products). Products
// of a training step follow each other within microseconds, so the pool stays awake through
// a step and sleeps soon after the last one.
constexpr auto kPollBeforeSleeping = std::chrono::microseconds(300);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls pred() until it holds or kPollBeforeSleeping passed; returns whether it held.
template <class Pred>
bool poll(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kPollBeforeSleeping;
  for (int i = 0;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return pred();
  }
}

class Pool {
 public:
  explicit Pool(int n_threads) {
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (std::thread& w : workers_) w.join();
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // False (nothing run) if another region holds the pool: the caller then runs inline.
  bool try_run(int n_tasks, const TaskRef& task) {
    std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
    if (!region.owns_lock()) return false;
    task_ = &task;
    n_tasks_ = n_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      // Under the mutex, so that a worker about to sleep cannot miss the new generation.
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_tasks();
    auto all_done = [this] { return busy_workers_.load(std::memory_order_acquire) == 0; };
    if (!poll(all_done)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, all_done);
    }
    task_ = nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void run_tasks() {
    const bool was_inside = t_inside_task;
    t_inside_task = true;
    for (int i; (i = next_task_.fetch_add(1)) < n_tasks_;) {
      try {
        (*task_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_inside_task = was_inside;
  }

  void worker_loop() {
    unsigned long seen = 0;
    for (;;) {
      auto new_work = [&] {
        return stop_.load(std::memory_order_acquire) ||
               generation_.load(std::memory_order_acquire) != seen;
      };
      if (!poll(new_work)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, new_work);
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      run_tasks();
      if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be between test and wait
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex region_mutex_;  // one parallel region at a time
  std::mutex mutex_;         // sleeping and waking; error_
  std::condition_variable wake_, done_;
  const TaskRef* task_ = nullptr;  // written before generation_ moves, read after
  int n_tasks_ = 0;
  std::atomic<int> next_task_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<unsigned long> generation_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
};

// The pool is created on first use. After fork() the child has only the forking thread: the
// parent's pool object is abandoned (its threads do not exist there, so it can be neither
// used nor destroyed) and a fresh one is made on the child's first parallel region.
// Callers hold a shared_ptr for the length of their region, so a resize by another thread
// (set_num_threads, then a new region) cannot destroy a pool that is still running tasks.
std::mutex g_pool_mutex;
std::shared_ptr<Pool> g_pool;
std::atomic<int> g_num_threads{0};  // 0: not yet decided; written under g_pool_mutex

void prepare_fork() { g_pool_mutex.lock(); }
void parent_after_fork() { g_pool_mutex.unlock(); }
void child_after_fork() {
  new std::shared_ptr<Pool>(std::move(g_pool));  // leaked on purpose: never destroyed here
  g_pool_mutex.unlock();
}

std::once_flag g_atfork_once;

int cgroup_cpu_limit() {
  // cgroup v2: "max 100000" or "<quota> <period>"
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long period = 0;
  if (v2 >> quota >> period && quota != "max" && period > 0)
    return std::max(1, static_cast<int>(std::ceil(std::stod(quota) / period)));
  // cgroup v1
  std::ifstream q1("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), p1("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  long q = -1, p = 0;
  if (q1 >> q && p1 >> p && q > 0 && p > 0)
    return std::max(1, static_cast<int>(std::ceil(static_cast<double>(q) / p)));
  return 0;  // no limit
}

std::shared_ptr<Pool> pool_locked() {
  if (g_num_threads == 0) g_num_threads = default_num_threads();
  if (!g_pool || g_pool->size() != g_num_threads) g_pool = std::make_shared<Pool>(g_num_threads);
  return g_pool;
}

}  // namespace

int default_num_threads() {
  if (const char* env = std::getenv("FASTMLP_NUM_THREADS"); env && *env) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end && *end == '\0' && n >= 1) return static_cast<int>(std::min(n, 1024L));
  }
  int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = std::max(1, CPU_COUNT(&set));
#endif
  if (const int limit = cgroup_cpu_limit(); limit > 0) n = std::min(n, limit);
  return n;
}

int get_num_threads() {
  // Read on every product: lock-free once decided.
  if (const int n = g_num_threads.load(std::memory_order_relaxed); n > 0) return n;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_num_threads == 0) g_num_threads = default_num_threads();
  return g_num_threads;
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("the number of threads must be >= 1");
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_num_threads = n;  // the pool is resized at the next region
}

void parallel_for(int n_tasks, TaskRef task) {
  if (n_tasks <= 0) return;
  if (n_tasks > 1 && !t_inside_task) {
    std::call_once(g_atfork_once,
                   [] { pthread_atfork(prepare_fork, parent_after_fork, child_after_fork); });
    std::shared_ptr<Pool> pool;
    {
      std::lock_guard<std::mutex> lock(g_pool_mutex);
      pool = pool_locked();
    }
    if (pool->size() > 1 && pool->try_run(n_tasks, task)) return;
  }
  const bool was_inside = t_inside_task;
  t_inside_task = true;
  try {
    for (int i = 0; i < n_tasks; ++i) task(i);
  } catch (...) {
    t_inside_task = was_inside;
    throw;
  }
  t_inside_task = was_inside;
}

}  // namespace fastmlp
