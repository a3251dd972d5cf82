import Foundation

/// A kernel benchmark that times a body as the median of `repetitions` runs (the kernel
/// benchmarks' one timing rule, so their figures are comparable).
protocol MedianTimed {
    /// Timed runs per measurement.
    var repetitions: Int { get }
}

extension MedianTimed {
    /// Median seconds of `repetitions` runs of `body` after one warm-up.
    func median(_ body: () -> Void) -> Double {
        body()
        var times: [Double] = []
        for _ in 0..<repetitions {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return times.sorted()[times.count / 2]
    }
}
