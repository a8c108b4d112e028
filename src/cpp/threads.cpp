// The persistent thread pool and its cost model (see threads.h).
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace fastmlp {

namespace {

thread_local bool t_inside_task = false;
thread_local ParallelMode t_mode = ParallelMode::automatic;
thread_local RegionStats* t_stats = nullptr;

// How long an idle thread polls before it sleeps on a condition variable. Waking a sleeping
// thread costs tens to hundreds of microseconds on a virtual machine, as long as a whole
// mid-size product. Products of a training step follow each other within microseconds, so
// the pool stays awake through a step and sleeps soon after the last one.
constexpr auto kPollBeforeSleeping = std::chrono::microseconds(300);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
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

// Test hook (testing_slow_regions): every measured region's wall time is multiplied by it.
std::atomic<double> g_slow_regions{1.0};

std::int64_t thread_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// ---- thread-count warnings ------------------------------------------------------------------

std::mutex g_warning_mutex;
std::string g_warning;  // under g_warning_mutex
std::atomic<bool> g_warning_pending{false};

void report(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_warning_mutex);
  g_warning = message;
  g_warning_pending.store(true, std::memory_order_release);
}

// ---- the pool -------------------------------------------------------------------------------

// The claim counter: the region's generation in the high bits, the next unclaimed task in the
// low kIndexBits. A claim is a compare-and-swap of (generation, i) to (generation, i + 1), so a
// thread holding a stale snapshot from an earlier region can never take a task of a later one.
constexpr int kIndexBits = 24;
constexpr std::uint64_t kIndexMask = (std::uint64_t{1} << kIndexBits) - 1;
constexpr int kMaxRegionTasks = static_cast<int>(kIndexMask);
inline std::uint64_t generation_of(std::uint64_t claim) { return claim >> kIndexBits; }
inline int index_of(std::uint64_t claim) { return static_cast<int>(claim & kIndexMask); }

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    idle_cv_.notify_all();
    for (std::thread& w : workers_) w.join();
  }

  // Makes n_threads threads (the caller included) take part in regions, starting workers as
  // needed; returns how many do. A thread the OS refuses ends the start-up: the pool runs
  // with the ones it has, and *error says why. Workers are never ended: with a smaller count
  // the extra ones sleep until needed again, so switching counts (an estimator's n_threads,
  // threadpool_limits) costs no thread creation. Called under g_pool_mutex.
  int resize(int n_threads, std::string* error) {
    const int had = static_cast<int>(workers_.size());
    if (n_threads - 1 > had) {
#ifdef __linux__
      caller_cpu_.store(sched_getcpu(), std::memory_order_relaxed);
#endif
      try {
        workers_.reserve(static_cast<std::size_t>(n_threads - 1));
        for (int index = had; index < n_threads - 1; ++index)
          workers_.emplace_back([this, index] { worker_loop(index); });
      } catch (const std::system_error& e) {
        *error = e.what();
      } catch (const std::bad_alloc&) {
        *error = "out of memory";
      }
      // New threads start on this CPU as often as not: let them run now, to move elsewhere.
      std::unique_lock<std::mutex> lock(mutex_);
      started_cv_.wait_for(lock, std::chrono::milliseconds(10),
                           [&] { return started_ == static_cast<int>(workers_.size()); });
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      active_.store(std::min(n_threads, static_cast<int>(workers_.size()) + 1));
    }
    idle_cv_.notify_all();
    return active_.load();
  }

  // Threads taking part in regions, the caller included.
  int size() const { return active_.load(std::memory_order_relaxed); }

  void stall_workers(int count) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stalled_.store(count);
    }
    wake_.notify_all();
  }

  // False (nothing run) if another region holds the pool: the caller then runs inline.
  bool try_run(int n_tasks, const TaskRef& task, RegionStats* stats) {
    std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
    if (!region.owns_lock()) return false;
    const auto started = stats ? std::chrono::steady_clock::now()
                               : std::chrono::steady_clock::time_point{};
    // The region's description is written before the claim counter moves to the new
    // generation (release): a thread that reads that generation sees it. A thread still
    // holding the previous generation cannot claim: the counter no longer matches.
    task_.store(&task, std::memory_order_relaxed);
    n_tasks_.store(n_tasks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    measure_.store(stats != nullptr, std::memory_order_relaxed);
    task_cpu_ns_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
#ifdef __linux__
    caller_cpu_.store(sched_getcpu(), std::memory_order_relaxed);
#endif
    const std::uint64_t generation = generation_of(claim_.load(std::memory_order_relaxed)) + 1;
    claim_.store(generation << kIndexBits, std::memory_order_seq_cst);
    // A worker counts itself in sleepers_ before its last look at claim_ (both seq_cst): if
    // none is counted here, every sleeper-to-be will see the new generation and not sleep.
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_.notify_all();
      }
      // A woken worker put on this CPU gets it for a moment, to move itself elsewhere
      // (move_off_callers_cpu) instead of waiting a time slice behind this thread.
      std::this_thread::yield();
    }
    run_tasks(generation);
    auto finished = [&] { return done_.load(std::memory_order_seq_cst) == n_tasks; };
    if (!poll(finished)) {
      std::unique_lock<std::mutex> lock(mutex_);
      caller_waiting_.store(true, std::memory_order_seq_cst);
      done_cv_.wait(lock, finished);
      caller_waiting_.store(false, std::memory_order_relaxed);
    }
    if (stats) {
      stats->wall_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() *
          g_slow_regions.load(std::memory_order_relaxed);
      stats->task_cpu_seconds += 1e-9 * static_cast<double>(task_cpu_ns_.load());
      stats->regions += 1;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  // A worker woken by the caller is often put on the caller's own CPU (Linux's wake-affine
  // placement) and stays there for milliseconds before the load balancer moves it, all the
  // while sharing one core with the caller: measured on a 2-vCPU VM, splits right after the
  // workers had slept ran no faster than one thread for 1-10 ms. A worker that finds itself
  // there leaves at once: an affinity mask without that CPU migrates it immediately, and the
  // old mask is put back (which does not move it again).
  void move_off_callers_cpu() {
#ifdef __linux__
    const int caller_cpu = caller_cpu_.load(std::memory_order_relaxed);
    if (caller_cpu < 0 || caller_cpu >= CPU_SETSIZE || sched_getcpu() != caller_cpu) return;
    cpu_set_t allowed, elsewhere;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
    elsewhere = allowed;
    CPU_CLR(caller_cpu, &elsewhere);
    if (CPU_COUNT(&elsewhere) == 0) return;
    if (sched_setaffinity(0, sizeof(elsewhere), &elsewhere) == 0)
      sched_setaffinity(0, sizeof(allowed), &allowed);
#endif
  }

  // Claims and runs tasks of `generation` until none is left (or a newer region began).
  void run_tasks(std::uint64_t generation) {
    const bool was_inside = t_inside_task;
    t_inside_task = true;
    std::int64_t clock = -1;  // thread CPU time after the previous task, when measuring
    for (;;) {
      std::uint64_t claim = claim_.load(std::memory_order_acquire);
      if (generation_of(claim) != generation) break;
      const int i = index_of(claim);
      const int n = n_tasks_.load(std::memory_order_relaxed);
      const TaskRef* task = task_.load(std::memory_order_relaxed);
      if (i >= n) break;
      // Succeeds only if no one claimed task i and no newer region began since the load, so
      // `task` and `n` belong to this generation.
      if (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel,
                                        std::memory_order_relaxed))
        continue;
      if (clock < 0 && measure_.load(std::memory_order_relaxed)) clock = thread_cpu_ns();
      try {
        (*task)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (clock >= 0) {  // counted before done_ moves: the caller reads it once all are done
        const std::int64_t now = thread_cpu_ns();
        task_cpu_ns_.fetch_add(now - clock, std::memory_order_relaxed);
        clock = now;
      }
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == n &&
          caller_waiting_.load(std::memory_order_seq_cst)) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_one();
      }
    }
    t_inside_task = was_inside;
  }

  // Worker `index` (0-based; the caller is thread 0 of a region, worker i is thread i + 1).
  void worker_loop(int index) {
    std::uint64_t seen = generation_of(claim_.load(std::memory_order_acquire));
    move_off_callers_cpu();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      started_ += 1;
    }
    started_cv_.notify_one();
    auto inactive = [&] { return index + 1 >= active_.load(std::memory_order_seq_cst); };
    for (;;) {
      if (inactive()) {  // not needed at the current thread count: sleep until it grows
        std::unique_lock<std::mutex> lock(mutex_);
        idle_cv_.wait(lock, [&] { return stop_.load() || !inactive(); });
        if (stop_.load()) return;
        seen = generation_of(claim_.load(std::memory_order_acquire));
        continue;
      }
      auto fresh = [&] {
        return stop_.load(std::memory_order_seq_cst) || inactive() ||
               generation_of(claim_.load(std::memory_order_seq_cst)) != seen;
      };
      if (!poll(fresh)) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, fresh);
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
      if (stop_.load()) return;
      if (inactive()) continue;
      seen = generation_of(claim_.load(std::memory_order_acquire));
      move_off_callers_cpu();
      if (index < stalled_.load()) {  // test hook: as if never scheduled
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_.load() || index >= stalled_.load(); });
        if (stop_.load()) return;
      }
      run_tasks(seen);
    }
  }

  std::vector<std::thread> workers_;  // grows under g_pool_mutex; never shrinks
  std::atomic<int> active_{1};       // threads taking part in regions, the caller included
  std::mutex region_mutex_;  // one parallel region at a time
  std::mutex mutex_;         // sleeping and waking; error_
  std::condition_variable wake_, done_cv_, started_cv_, idle_cv_;
  int started_ = 0;  // workers that have begun their loop; under mutex_
  std::atomic<std::uint64_t> claim_{0};
  std::atomic<const TaskRef*> task_{nullptr};
  std::atomic<int> n_tasks_{0};
  std::atomic<int> done_{0};
  std::atomic<bool> measure_{false};
  std::atomic<std::int64_t> task_cpu_ns_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_waiting_{false};
  std::atomic<bool> stop_{false};
  std::atomic<int> stalled_{0};
  std::atomic<int> caller_cpu_{-1};  // the CPU the caller of the current region started on
  std::exception_ptr error_;
};

// The pool is created on first use. After fork() the child has only the forking thread: the
// parent's pool object is abandoned (its threads do not exist there, so it can be neither
// used nor destroyed) and a fresh one is made on the child's first parallel region.
// Callers hold a shared_ptr for the length of their region, so a resize by another thread
// (set_num_threads) cannot destroy a pool that is still running tasks.
std::mutex g_pool_mutex;
std::shared_ptr<Pool> g_pool;      // under g_pool_mutex
int g_requested = 0;               // under g_pool_mutex; 0: not decided yet
int g_pool_requested = 0;          // under g_pool_mutex: the count g_pool was last sized for
std::atomic<int> g_num_threads{0};  // what get_num_threads() reports; 0: not decided yet

void prepare_fork() { g_pool_mutex.lock(); }
void parent_after_fork() { g_pool_mutex.unlock(); }
void child_after_fork() {
  new std::shared_ptr<Pool>(std::move(g_pool));  // leaked on purpose: never destroyed here
  g_pool_mutex.unlock();
}
std::once_flag g_atfork_once;

std::shared_ptr<Pool> pool_locked() {
  std::call_once(g_atfork_once,
                 [] { pthread_atfork(prepare_fork, parent_after_fork, child_after_fork); });
  if (g_requested == 0) g_requested = default_num_threads();
  if (!g_pool) {
    g_pool = std::make_shared<Pool>();
    g_pool_requested = 0;
  }
  if (g_pool_requested != g_requested) {  // sized once per request: a refusal is not retried
    g_pool_requested = g_requested;
    std::string error;
    const int got = g_pool->resize(g_requested, &error);
    if (got < g_requested)
      report("fastmlp could start only " + std::to_string(got) + " of the " +
             std::to_string(g_requested) + " threads asked for (" + error + "); it runs with " +
             std::to_string(got));
  }
  g_num_threads.store(g_pool->size());
  return g_pool;
}

std::shared_ptr<Pool> current_pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  return pool_locked();
}

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

// A positive integer from the environment (for OMP_NUM_THREADS, the first entry of a nested
// list such as "4,2"), or 0 if the variable is unset or not one.
long env_threads(const char* name) {
  const char* value = std::getenv(name);
  if (!value || !*value) return 0;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (end == value || n < 1 || (*end != '\0' && *end != ',')) return 0;
  return n;
}

}  // namespace

int available_cpus() {
  int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = std::max(1, CPU_COUNT(&set));
#endif
  if (const int limit = cgroup_cpu_limit(); limit > 0) n = std::min(n, limit);
  return n;
}

int max_num_threads() { return 4 * available_cpus(); }

int default_num_threads() {
  for (const char* name : {"FASTMLP_NUM_THREADS", "OMP_NUM_THREADS"}) {
    if (const long n = env_threads(name); n > 0) {
      const int cap = max_num_threads();
      if (n <= cap) return static_cast<int>(n);
      report(std::string(name) + "=" + std::to_string(n) + " is more than fastmlp's cap of " +
             std::to_string(cap) + " threads (4 x the " + std::to_string(available_cpus()) +
             " CPUs this process may use); using " + std::to_string(cap));
      return cap;
    }
  }
  return available_cpus();
}

int get_num_threads() {
  // Read on every product: lock-free once decided.
  if (const int n = g_num_threads.load(std::memory_order_relaxed); n > 0) return n;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_requested == 0) g_requested = default_num_threads();
  if (g_num_threads.load() == 0) g_num_threads.store(g_requested);
  return g_num_threads.load();
}

void set_num_threads(int n) {
  const int cap = max_num_threads();
  if (n < 1 || n > cap)
    throw std::invalid_argument("the number of threads must be between 1 and " +
                                std::to_string(cap) + " (4 x the " +
                                std::to_string(available_cpus()) +
                                " CPUs this process may use), got " + std::to_string(n));
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_requested = n;
  pool_locked();
}

int start_threads() { return current_pool()->size(); }

std::string take_thread_warning() {
  if (!g_warning_pending.load(std::memory_order_acquire)) return {};
  std::lock_guard<std::mutex> lock(g_warning_mutex);
  g_warning_pending.store(false);
  return std::move(g_warning);
}

ParallelScope::ParallelScope(ParallelMode mode) : saved_(t_mode) { t_mode = mode; }
ParallelScope::~ParallelScope() { t_mode = saved_; }
ParallelMode current_parallel_mode() { return t_mode; }
bool inside_parallel_task() { return t_inside_task; }

RegionStatsScope::RegionStatsScope(RegionStats* into) : saved_(t_stats) { t_stats = into; }
RegionStatsScope::~RegionStatsScope() { t_stats = saved_; }

namespace {
// The contention guard's ledger (see threads.h), under g_ledger_mutex (taken once per
// measured training step).
std::mutex g_ledger_mutex;
double g_balance_seconds = 0.0;
double g_backoff_seconds = kRetryFirstSeconds;
std::atomic<std::int64_t> g_retry_at_ns{0};  // steady_clock time before which no retry

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

bool parallel_retry_due() { return steady_ns() >= g_retry_at_ns.load(std::memory_order_relaxed); }

bool record_parallel_run(double task_cpu_seconds, double wall_seconds) {
  std::lock_guard<std::mutex> lock(g_ledger_mutex);
  const double saved = kParallelWinRatio * task_cpu_seconds - wall_seconds;
  g_balance_seconds = std::min(g_balance_seconds + saved, kBalanceCapSeconds);
  if (g_balance_seconds >= kBalanceCapSeconds) g_backoff_seconds = kRetryFirstSeconds;
  if (g_balance_seconds >= 0.0) return true;
  g_balance_seconds = 0.0;
  g_retry_at_ns.store(steady_ns() + static_cast<std::int64_t>(g_backoff_seconds * 1e9),
                      std::memory_order_relaxed);
  g_backoff_seconds = std::min(2 * g_backoff_seconds, kRetryLongestSeconds);
  return false;
}

void parallel_for(int n_tasks, TaskRef task) {
  if (n_tasks <= 0) return;
  if (n_tasks > 1 && !t_inside_task && t_mode != ParallelMode::serial &&
      g_num_threads.load(std::memory_order_relaxed) != 1) {
    const std::shared_ptr<Pool> pool = current_pool();
    if (pool->size() > 1) {
      // (More tasks than the claim counter holds never happen: products make one per thread.)
      if (n_tasks <= kMaxRegionTasks && pool->try_run(n_tasks, task, t_stats)) return;
    }
  }
  const bool was_inside = t_inside_task;
  t_inside_task = true;
  std::exception_ptr error;
  for (int i = 0; i < n_tasks; ++i) {
    try {
      task(i);
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  t_inside_task = was_inside;
  if (error) std::rethrow_exception(error);
}

void testing_slow_regions(double factor) {
  g_slow_regions.store(factor);
  std::lock_guard<std::mutex> lock(g_ledger_mutex);
  g_balance_seconds = 0.0;
  g_backoff_seconds = kRetryFirstSeconds;
  g_retry_at_ns.store(0);
}

void testing_failing_region(int tasks, int failing, int* ran) {
  std::atomic<int> count{0};
  try {
    parallel_for(tasks, [&](int i) {
      if (i == failing) throw std::runtime_error("task " + std::to_string(i) + " failed");
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
      while (std::chrono::steady_clock::now() < until) cpu_relax();
      count.fetch_add(1);
    });
  } catch (...) {
    *ran = count.load();
    throw;
  }
  *ran = count.load();
}

void testing_stall_workers(int count) { current_pool()->stall_workers(std::max(0, count)); }

bool testing_check_regions(int regions, int tasks) {
  std::vector<std::atomic<int>> runs(static_cast<std::size_t>(regions) * tasks);
  bool ok = true;
  for (int r = 0; r < regions; ++r) {
    std::atomic<int>* region_runs = runs.data() + static_cast<std::size_t>(r) * tasks;
    parallel_for(tasks, [&](int i) {
      region_runs[i].fetch_add(1);
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
      while (std::chrono::steady_clock::now() < until) cpu_relax();
    });
    for (int i = 0; i < tasks; ++i) ok &= region_runs[i].load() == 1;
  }
  // Workers that were held back go on now: they must find nothing left to run.
  testing_stall_workers(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (const std::atomic<int>& count : runs) ok &= count.load() == 1;
  return ok;
}

}  // namespace fastmlp
