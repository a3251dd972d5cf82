import CKernels
import Foundation

/// Two-way parallel sections on a helper thread that stays ready between them (`moe_corepair_run`
/// in CKernels/corepair.c): the split products and expert workers of a decode step, ~80 sections
/// of 50-300 µs per token on the OLMoE-1B-7B shape, where GCD's sleeping workers cost a wake-up
/// each. Falls back to `DispatchQueue.concurrentPerform` when the helper is busy (nested or
/// concurrent sections) or disabled (`MOE_COREPAIR=0`).
public enum CorePair {
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
