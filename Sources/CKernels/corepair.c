// A second core kept ready for short parallel sections (a decode step's split products and
// expert workers): one helper thread that spins briefly between jobs, then sleeps.
//
// Why not GCD: a decode step of the OLMoE-1B-7B shape hands work to the other core ~80 times
// (q/k/v/o products, the experts of each of 16 layers), each section 50-300 µs long. GCD's idle
// worker sleeps in a futex and took a wake-up (tens of µs on this VM) at every section, while
// the calling core finished its half and waited: a third of the decode's wall time had one core
// idle. The helper spins for `MOE_COREPAIR_SPIN_US` (default 1000 µs) after each job, so within a
// decode step it is already running when the next section starts; between steps it sleeps.
//
// While expert reads are in flight (`moe_corepair_quiet`, counted by the expert cache) the helper
// sleeps at once after a job instead: on two cores its spin took the core that the reads'
// completions (io_uring reaper, reader threads) and the next layer's attention need. Measured on
// the widened demo at a quarter of its experts (docs/BENCHMARKS.md, "Where the rest of the bound
// goes"): 1.00-1.04x decode against the spin, paired, 4 of 4 rounds not slower — small, within the
// disk's noise. `MOE_COREPAIR_QUIET=0` keeps the helper spinning regardless.
#include "CKernels.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t pair_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pair_wake = PTHREAD_COND_INITIALIZER;
static pthread_once_t pair_once = PTHREAD_ONCE_INIT;
static int pair_available;                 // the helper started, and not disabled
static uint64_t pair_spin_ns = 1000000;     // how long the helper spins after a job
static _Atomic uint64_t pair_posted;       // epoch of the last job posted
static _Atomic uint64_t pair_finished;     // epoch of the last job the helper finished
static _Atomic int pair_sleeping;          // the helper waits on pair_wake
static _Atomic int pair_busy;              // a caller owns the helper
static _Atomic int pair_quiet;             // expert reads in flight: > 0 means sleep after a job
static int pair_quiet_enabled = 1;         // MOE_COREPAIR_QUIET=0 clears it
static moe_corepair_fn pair_fn;
static void *pair_context;

static inline void pair_pause(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

static inline uint64_t pair_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *pair_helper(void *unused) {
    (void)unused;
    uint64_t seen = 0;
    for (;;) {
        uint64_t start = pair_now_ns();
        for (unsigned spins = 1; atomic_load(&pair_posted) == seen; spins++) {
            pair_pause();
            if (spins % 64 == 0 && ((pair_quiet_enabled && atomic_load(&pair_quiet) > 0) || pair_now_ns() - start > pair_spin_ns)) {
                // Sleep. `sleeping` is set and `posted` re-read under the lock, and the caller
                // reads `sleeping` after storing `posted` (both sequentially consistent): either
                // the caller sees the helper asleep and signals it under the lock, or the helper
                // sees the new epoch. No wake-up is lost.
                pthread_mutex_lock(&pair_lock);
                atomic_store(&pair_sleeping, 1);
                while (atomic_load(&pair_posted) == seen) pthread_cond_wait(&pair_wake, &pair_lock);
                atomic_store(&pair_sleeping, 0);
                pthread_mutex_unlock(&pair_lock);
                break;
            }
        }
        seen = atomic_load(&pair_posted);
        pair_fn(pair_context, 1);
        atomic_store_explicit(&pair_finished, seen, memory_order_release);
    }
    return NULL;
}

static void pair_start(void) {
    const char *off = getenv("MOE_COREPAIR");
    if (off && strcmp(off, "0") == 0) return;
    const char *spin = getenv("MOE_COREPAIR_SPIN_US");
    if (spin && *spin) pair_spin_ns = (uint64_t)strtoull(spin, NULL, 10) * 1000u;
    const char *quiet = getenv("MOE_COREPAIR_QUIET");
    if (quiet && strcmp(quiet, "0") == 0) pair_quiet_enabled = 0;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pair_available = pthread_create(&thread, &attr, pair_helper, NULL) == 0;
    pthread_attr_destroy(&attr);
}

int moe_corepair_prepare(void) {
    pthread_once(&pair_once, pair_start);
    return pair_available;
}

void moe_corepair_quiet(int delta) { atomic_fetch_add(&pair_quiet, delta); }

int moe_corepair_quiet_count(void) { return atomic_load(&pair_quiet); }

int moe_corepair_run(moe_corepair_fn fn, void *context) {
    pthread_once(&pair_once, pair_start);
    if (!pair_available) return 0;
    int expected = 0;
    // Taken (a nested section, or another thread's): the caller uses its fallback.
    if (!atomic_compare_exchange_strong(&pair_busy, &expected, 1)) return 0;
    pair_fn = fn;
    pair_context = context;
    const uint64_t epoch = atomic_load(&pair_posted) + 1;
    atomic_store(&pair_posted, epoch);
    if (atomic_load(&pair_sleeping)) {
        pthread_mutex_lock(&pair_lock);
        pthread_cond_signal(&pair_wake);
        pthread_mutex_unlock(&pair_lock);
    }
    fn(context, 0);
    // The helper's half: spin (it is running or about to), yielding the core now and then in
    // case the helper was descheduled in favour of this thread.
    for (unsigned spins = 1; atomic_load_explicit(&pair_finished, memory_order_acquire) != epoch; spins++) {
        pair_pause();
        if (spins % 4096 == 0) sched_yield();
    }
    atomic_store(&pair_busy, 0);
    return 1;
}
