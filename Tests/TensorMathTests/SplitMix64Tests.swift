import Testing
import TensorMath

/// The shared seeded generator must reproduce the exact streams its former copies produced:
/// synthetic checkpoints, seeded sampling and benchmark orders depend on it.
@Suite struct SplitMix64Tests {
    @Test func referenceOutputs() {
        // SplitMix64 from seed 0, as in Vigna's reference implementation (splitmix64.c).
        var g = SplitMix64(seed: 0)
        #expect(g.next() == 0xE220_A839_7B1D_CDAF)
        #expect(g.next() == 0x6E78_9E6A_A1B9_65F4)
        #expect(g.next() == 0x06C4_5D18_8009_454F)
    }

    @Test func helpersMatchTheFormulasTheyReplaced() {
        var a = SplitMix64(seed: 42), b = SplitMix64(seed: 42)
        for _ in 0..<10_000 {
            // The samplers' draw (TokenSampler, Generator).
            #expect(a.nextUnitDouble() == Double(b.next() >> 11) / Double(UInt64(1) << 53))
            // The test checkpoints' weights in [-1, 1), bit for bit.
            let f = a.nextFloat(in: -1..<1)
            let old = Float(b.next() >> 40) / Float(1 << 24) * 2 - 1
            #expect(f.bitPattern == old.bitPattern)
            #expect(f >= -1 && f < 1)
        }
    }
}
