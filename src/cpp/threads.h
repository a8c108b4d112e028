// fastmlp's own persistent thread pool (std::thread, no OpenMP), and what decides when it is
// worth using.
//
// Why not OpenMP: a wheel that bundles a second OpenMP runtime next to NumPy's or PyTorch's is
// a known source of crashes ("OMP: Error #15"), and libgomp's pool hangs in a child after
// fork(). This pool is re-created in a forked child on first use.
//
// A parallel region is a fixed list of tasks 0 … n-1. Tasks are claimed one at a time from a
// counter tagged with the region's generation, by the calling thread and by whichever workers
// are awake; the region is over when every task has *finished*, whoever ran it. A worker that
// the OS has not scheduled yet holds nobody up: it finds the counter exhausted (or a newer
// generation) and takes nothing. The split into tasks is made by the caller from the shape
// of the work alone, so results never depend on which thread ran which task.
//
// Busy machines: a worker descheduled *while* it runs a task still delays the region by up
// to a scheduler time slice (milliseconds). So the pool is used only where the work is large
// against the measured cost of a region (the GEMM's cost model, gemm.h), and callers that
// run many regions in a row (the training engine) measure each step with RegionStats and fall
// back to one thread when regions cost more wall time than the work they spread.
#pragma once

#include <string>
#include <type_traits>
#include <utility>

namespace fastmlp {

// ---- how many threads ---------------------------------------------------------------------

// The CPUs this process may run on: its CPU affinity mask, capped by a cgroup CPU quota
// (cgroup v2 cpu.max, or v1 cfs_quota_us / cfs_period_us).
int available_cpus();

// The most threads set_num_threads accepts: 4 × available_cpus(). More threads than CPUs
// only time-share the same cores; far more is a typo (FASTMLP_NUM_THREADS=1024) that would
// reserve gigabytes of thread stacks.
int max_num_threads();

// The default: FASTMLP_NUM_THREADS if set, else OMP_NUM_THREADS (its first entry; joblib
// sets it in its worker processes), else available_cpus(); capped at max_num_threads().
// A value that is not a positive integer is ignored; one above the cap is capped, and the
// pool reports it (take_thread_warning).
int default_num_threads();

// The threads kernels may use, the calling thread included. Once the pool has started this
// is the number of threads it really runs (fewer than asked for if the OS refused some).
int get_num_threads();
// 1 ≤ n ≤ max_num_threads(), else std::invalid_argument. Resizes the pool now, on the
// calling thread (see start_threads).
void set_num_threads(int n);
// Starts the pool if it is not running with the current thread count; returns its size.
// Thread creation can fail (RLIMIT_NPROC, RLIMIT_AS, a pids cgroup): the pool then runs
// with the threads it got, get_num_threads() says how many, and take_thread_warning() says
// why. It never waits for a thread that was not created.
int start_threads();
// A message about the last thread-count problem (a refused thread, a capped environment
// variable), once; empty when there is nothing to report. Cheap to poll.
std::string take_thread_warning();

// ---- per calling thread: how regions started by this thread behave ------------------------

// How the products of a scope may use the pool.
enum class ParallelMode {
  automatic,  // each product decides from its FLOPs (gemm_split_pays, gemm.h)
  serial,     // every product on the calling thread
  parallel,   // every product large enough to split is split (the caller decided already)
};

// Sets the calling thread's mode for the lifetime of the scope (scopes nest).
class ParallelScope {
 public:
  explicit ParallelScope(ParallelMode mode);
  ~ParallelScope();
  ParallelScope(const ParallelScope&) = delete;
  ParallelScope& operator=(const ParallelScope&) = delete;

 private:
  ParallelMode saved_;
};
ParallelMode current_parallel_mode();
// Whether the calling thread is running a task of a parallel region (whose own regions run
// inline).
bool inside_parallel_task();

// Wall time of the regions this thread started, and the CPU time their tasks took on every
// thread (CLOCK_THREAD_CPUTIME_ID: time a descheduled thread waits is not counted). Run on
// one thread, the same tasks would take about task_cpu_seconds; so a run of regions whose
// wall time exceeds that CPU time lost to parallelism. Collected only inside a
// RegionStatsScope (two clock reads per thread per region).
struct RegionStats {
  double wall_seconds = 0.0;
  double task_cpu_seconds = 0.0;
  int regions = 0;
};
class RegionStatsScope {
 public:
  explicit RegionStatsScope(RegionStats* into);
  ~RegionStatsScope();
  RegionStatsScope(const RegionStatsScope&) = delete;
  RegionStatsScope& operator=(const RegionStatsScope&) = delete;

 private:
  RegionStats* saved_;
};

// ---- the contention guard ---------------------------------------------------------------

// The contention guard's ledger, shared by every caller in the process (a busy machine is busy
// for every engine). A caller that splits work reports, after each measured run of regions,
// the seconds parallelism saved: kParallelWinRatio × (their tasks' CPU time, what one thread
// would have spent) − (their wall time); negative when it lost. The ledger keeps the running
// balance, capped at kBalanceCapSeconds, and answers whether to go on: once the balance is
// below zero the caller should fall back to one thread, and no caller is let back to the
// pool for a back-off time that doubles with each fall-back, from kRetryFirstSeconds to
// kRetryLongestSeconds, and starts over once the balance reaches the cap again.
//
// Why a balance of seconds rather than a count of lost runs: on a busy machine one lost run
// (a worker descheduled mid-task: a time slice, 1-4 ms) can cost more than many won runs
// save (0.1-0.3 ms each for the mnist-shaped net), and on an idle virtual machine an occasional
// lost run (the host taking the second vCPU for a moment) is absorbed by what the runs before
// it saved. Measured on the 2-vCPU VM (mnist-shaped net, another process on a core): falling
// back at the first lost step lost 1 epoch in 10 to a needless fall-back when idle; falling
// back at the second lost step in a row left 0.76-0.99x one thread's speed under load.
constexpr double kParallelWinRatio = 0.9;
constexpr double kBalanceCapSeconds = 0.005;
constexpr double kRetryFirstSeconds = 0.05, kRetryLongestSeconds = 2.0;
bool parallel_retry_due();
// Returns whether to keep using the pool (false: fall back now).
bool record_parallel_run(double task_cpu_seconds, double wall_seconds);

// ---- running tasks --------------------------------------------------------------------------

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
// and returns when all have finished (rethrowing the first exception a task threw; the other
// tasks still run). Tasks run inline, one after another, when the calling thread's mode is
// serial, when the pool is busy with another caller's region, or when called from inside a
// task: never a deadlock, never oversubscription.
void parallel_for(int n_tasks, TaskRef task);

// ---- test hooks (fastmlp._testing) ----------------------------------------------------------

// Makes the first `count` workers stop before they claim a task of any region, as if the OS
// never scheduled them, until called again with 0 (which lets them go on).
void testing_stall_workers(int count);
// Runs `regions` regions of `tasks` tasks each, every task counting its own runs; returns
// whether every task of every region ran exactly once, before its region returned, and never
// again afterwards (checked after the workers have been allowed to go on).
bool testing_check_regions(int regions, int tasks);
// Runs a region of `tasks` tasks in which task `failing` throws std::runtime_error; the
// exception reaches the caller once every other task has run (and `ran` counts them).
void testing_failing_region(int tasks, int failing, int* ran);
// Multiplies the wall time RegionStats records per region by `factor` (1: off): a simulated
// busy machine. Also clears the contention guard's ledger and back-off, so the next parallel
// step is tried at once.
void testing_slow_regions(double factor);

}  // namespace fastmlp
