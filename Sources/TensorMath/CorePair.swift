import CKernels
import Foundation

/// Two-way parallel sections on a helper thread that stays ready between them (`moe_corepair_run`
/// in CKernels/corepair.c): the split products and expert workers of a decode step, ~80 sections
/// of 50-300 µs per token on the OLMoE-1B-7B shape, where GCD's sleeping workers cost a wake-up
/// each. Falls back to `DispatchQueue.concurrentPerform` when the helper is busy (nested or
/// concurrent sections) or disabled (`MOE_COREPAIR=0`).
public enum CorePair {
    /// Counts reads in flight that the helper yields its core to (`delta` +1 when a caller's
    /// first read starts, −1 when its last ends): while any are, the helper sleeps after each job
    /// instead of spinning, so that on two cores the reads' completions and the calling thread
    /// get the second core (the expert cache calls it; measured in docs/BENCHMARKS.md).
    public static func quiet(_ delta: Int) { moe_corepair_quiet(Int32(delta)) }

    /// The count `quiet` keeps (0 when no reads are in flight); for tests.
    public static var quietCount: Int { Int(moe_corepair_quiet_count()) }

    /// Starts the helper thread if it is not running yet: a model calls it when it is built, so
    /// that no decode step pays for creating the thread (the first split of a step once did).
    @discardableResult
    public static func prepare() -> Bool { moe_corepair_prepare() != 0 }

    /// Runs `job(context, 0)` on this thread and `job(context, 1)` on the helper; returns when both
    /// are done. A C function and a context pointer: no closure context to allocate, where `run`'s
    /// closure, when it captures more than a few trivial values, cost two heap allocations per call
    /// (DecodeStepAllocationTests found them in the per-layer attention split).
    public static func run(context: UnsafeMutableRawPointer, _ job: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void) {
        if moe_corepair_run(job, context) == 0 {
            let shared = UncheckedSendable(context)
            DispatchQueue.concurrentPerform(iterations: 2) { job(shared.value, Int32($0)) }
        }
    }

    /// Runs `body(0)` on this thread and `body(1)` on the helper; returns when both are done.
    public static func run(_ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            var job = body
            let ran = withUnsafeMutablePointer(to: &job) { pointer in
                moe_corepair_run({ context, index in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(index))
                }, pointer)
            }
            if ran == 0 {
                let step = UncheckedSendable(body)
                DispatchQueue.concurrentPerform(iterations: 2) { step.value($0) }
            }
        }
    }
}
