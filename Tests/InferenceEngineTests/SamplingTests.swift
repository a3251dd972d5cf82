import Foundation
import Testing
import TensorMath
@testable import InferenceEngine

@Suite struct SamplingTests {
    let logits: [Float] = [1.0, 3.0, 2.5, -1.0, 0.5]

    func parameters(_ configure: (inout SamplingParameters) -> Void) -> SamplingParameters {
        var p = SamplingParameters()
        p.seed = 11
        configure(&p)
        return p
    }

    @Test func temperatureZeroIsGreedy() {
        var sampler = TokenSampler(parameters: parameters { $0.temperature = 0 }, prompt: [])
        #expect(sampler.sample(logits).token == 1)
    }

    @Test func topKOfOneIsGreedyAtAnyTemperature() {
        var sampler = TokenSampler(parameters: parameters { $0.temperature = 5; $0.topK = 1 }, prompt: [])
        for _ in 0..<20 { #expect(sampler.sample(logits).token == 1) }
    }

    @Test func sameSeedSameTokens() {
        let p = parameters { $0.temperature = 1.5; $0.seed = 99 }
        var a = TokenSampler(parameters: p, prompt: []), b = TokenSampler(parameters: p, prompt: [])
        let first = (0..<50).map { _ in a.sample(logits).token }
        let second = (0..<50).map { _ in b.sample(logits).token }
        #expect(first == second)
        #expect(Set(first).count > 1) // it really samples
    }

    @Test func minPAndTopPTruncate() {
        // p ∝ e^logit: token 1 has p≈0.53, token 2 ≈0.32; min-p 0.7 keeps only token 1.
        var minP = TokenSampler(parameters: parameters { $0.minP = 0.7 }, prompt: [])
        for _ in 0..<20 { #expect(minP.sample(logits).token == 1) }
        // top-p 0.8 keeps tokens 1 and 2 (0.53 + 0.32 ≥ 0.8).
        var topP = TokenSampler(parameters: parameters { $0.topP = 0.8 }, prompt: [])
        let drawn = Set((0..<200).map { _ in topP.sample(logits).token })
        #expect(drawn == [1, 2])
    }

    /// The draw as it was before session 34: without truncation straight from the softmax; with
    /// it, the whole vocabulary sorted (stably) by logit, then top-k, min-p and top-p on the
    /// sorted list. The reference the faster selection must
    /// match token for token.
    static func referenceDraw(_ logits: [Float], _ p: SamplingParameters, _ random: inout SplitMix64) -> Int {
        if p.topK <= 0 && p.topP >= 1 && p.minP <= 0 {
            // No truncation: straight from the softmax in id order (no sort then either).
            let maximum = logits.max() ?? 0
            var total = 0.0
            for logit in logits { total += Double(expf((logit - maximum) / p.temperature)) }
            var remaining = random.nextUnitDouble() * total
            for (token, logit) in logits.enumerated() {
                remaining -= Double(expf((logit - maximum) / p.temperature))
                if remaining < 0 { return token }
            }
            return logits.count - 1
        }
        var order = logits.indices.sorted { logits[$0] > logits[$1] }
        if p.topK > 0 && p.topK < order.count { order.removeLast(order.count - p.topK) }
        let maximum = logits[order[0]]
        var weights = order.map { Double(expf((logits[$0] - maximum) / p.temperature)) }
        var total = weights.reduce(0, +)
        if p.minP > 0 {
            let threshold = Double(p.minP) * weights[0]
            let keep = max(1, weights.firstIndex { $0 < threshold } ?? weights.count)
            weights.removeLast(weights.count - keep)
            order.removeLast(order.count - keep)
            total = weights.reduce(0, +)
        }
        if p.topP < 1 {
            var cumulative = 0.0
            var keep = weights.count
            for (i, w) in weights.enumerated() {
                cumulative += w / total
                if cumulative >= Double(p.topP) { keep = i + 1; break }
            }
            weights.removeLast(weights.count - keep)
            order.removeLast(order.count - keep)
            total = weights.reduce(0, +)
        }
        var remaining = random.nextUnitDouble() * total
        for (i, w) in weights.enumerated() {
            remaining -= w
            if remaining < 0 { return order[i] }
        }
        return order[order.count - 1]
    }

    /// Selecting only the candidates truncation can keep (top-k by a heap, min-p by a filter,
    /// top-p alone by the nucleus, everything by packed keys) draws exactly the tokens the whole
    /// sorted vocabulary drew, for
    /// every truncation, at vocabularies from 1 to 4,096 ids with many ties and both zeros.
    @Test func truncationWithoutSortingTheVocabularyDrawsTheSameTokens() {
        var source = SplitMix64(seed: 5)
        var cases = 0
        for vocabulary in [1, 2, 7, 64, 4096] {
            for round in 0..<3 {
                // Logits on a coarse grid (ties everywhere), some of them -0 and +0.
                let logits: [Float] = (0..<vocabulary).map { _ in
                    let value = Float(Int(source.next() % 41) - 20) / (round == 0 ? 4 : 1.5)
                    return value == 0 && source.next() % 2 == 0 ? -0.0 : value
                }
                for topK in [0, 1, 3, 40, vocabulary, vocabulary + 5] {
                    for topP: Float in [1, 0.95, 0.5] {
                        for minP: Float in [0, 0.05, 0.6] {
                            let p = parameters {
                                $0.temperature = [0.3, 0.8, 1.7][cases % 3]
                                $0.topK = topK; $0.topP = topP; $0.minP = minP
                                $0.seed = UInt64(cases)
                            }
                            var sampler = TokenSampler(parameters: p, prompt: [])
                            var reference = SplitMix64(seed: UInt64(cases))
                            for _ in 0..<8 {
                                let drawn = sampler.sample(logits, logprobs: false).token
                                let expected = Self.referenceDraw(logits, p, &reference)
                                #expect(drawn == expected, "V \(vocabulary) top-k \(topK) top-p \(topP) min-p \(minP)")
                            }
                            cases += 1
                        }
                    }
                }
            }
        }
        #expect(cases == 5 * 3 * 6 * 3 * 3)
    }

    /// Top-p alone orders only the ids in the logit buckets up to its cut-off: at a vocabulary of
    /// 50,000 and nuclei from one id to tens of thousands, it draws the tokens the whole sorted
    /// vocabulary drew, and a nucleus it selects is exactly the shortest sorted prefix reaching
    /// top-p (a nearly flat distribution's, thousands of ids, is left to the whole order).
    @Test func topPAloneOrdersOnlyItsNucleusAndDrawsTheSameTokens() {
        var source = SplitMix64(seed: 11)
        let vocabulary = 50_000
        var selected = 0
        for spread: Float in [0.5, 2, 6, 12] {
            // Logits rounded to a grid (ties), falling off over ranks: spread sets how peaked.
            let logits: [Float] = (0..<vocabulary).map { _ in
                let u = Float(source.next() % 1_000_000) / 1_000_000
                return (spread * -log(max(u, 1e-6))).rounded() / 4
            }
            for topP: Float in [0.3, 0.9, 0.99] {
                for temperature: Float in [0.7, 1.3] {
                    // Nil: an eighth of the vocabulary or more, which the caller orders whole.
                    let nucleus = logits.withUnsafeBufferPointer { TokenSampler.nucleus($0, topP: topP, temperature: temperature) }
                    // The reference cut-off: the whole vocabulary sorted, shares summed in that order.
                    let order = logits.indices.sorted { logits[$0] > logits[$1] }
                    let maximum = logits[order[0]]
                    let weights = order.map { Double(expf((logits[$0] - maximum) / temperature)) }
                    let total = weights.reduce(0, +)
                    var cumulative = 0.0, keep = weights.count
                    for (i, w) in weights.enumerated() {
                        cumulative += w / total
                        if cumulative >= Double(topP) { keep = i + 1; break }
                    }
                    if let nucleus {
                        #expect(nucleus == Array(order.prefix(keep)), "spread \(spread) top-p \(topP) T \(temperature): \(nucleus.count) ids against \(keep)")
                        selected += 1
                    } else {
                        #expect(keep * 8 >= vocabulary / 2, "spread \(spread) top-p \(topP) T \(temperature): no nucleus for \(keep) ids")
                    }
                    let p = parameters { $0.temperature = temperature; $0.topP = topP; $0.seed = 3 }
                    var sampler = TokenSampler(parameters: p, prompt: [])
                    var reference = SplitMix64(seed: 3)
                    for _ in 0..<4 {
                        #expect(sampler.sample(logits, logprobs: false).token == Self.referenceDraw(logits, p, &reference))
                    }
                }
            }
        }
        // Nuclei of 1 to 463 ids are selected; the nearly flat ones (thousands of ids) order every id.
        #expect(selected >= 10)
    }

    /// The most likely alternatives are the first ids of the whole vocabulary sorted by
    /// log-probability (ties: the lower id), as before.
    @Test func topAlternativesMatchTheWholeSortedVocabulary() {
        let logits: [Float] = (0..<500).map { Float(($0 * 37) % 23) / 3 }
        var sampler = TokenSampler(parameters: parameters { $0.temperature = 0 }, prompt: [])
        for count in [1, 5, 20, 500] {
            let top = sampler.sample(logits, topCount: count).top
            let expected = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(count)
            #expect(top.map(\.token) == Array(expected))
        }
    }

    @Test func penaltiesDiscourageRepeats() {
        var repetition = TokenSampler(parameters: parameters { $0.temperature = 0; $0.repetitionPenalty = 2 }, prompt: [1])
        // logit 3.0 / 2 = 1.5 < 2.5
        #expect(repetition.sample(logits).token == 2)
        var frequency = TokenSampler(parameters: parameters { $0.temperature = 0; $0.frequencyPenalty = 1 }, prompt: [])
        #expect(frequency.sample(logits).token == 1) // nothing generated yet
        #expect(frequency.sample(logits).token == 2) // 3.0 - 1 = 2.0 < 2.5
        var presence = TokenSampler(parameters: parameters { $0.temperature = 0; $0.presencePenalty = 0.4 }, prompt: [])
        #expect(presence.sample(logits).token == 1)
        #expect(presence.sample(logits).token == 1) // 2.6 > 2.5
        #expect(presence.sample(logits).token == 1) // presence does not accumulate
    }

    @Test func logprobsAreLogSoftmaxOfTheLogits() {
        var sampler = TokenSampler(parameters: parameters { $0.temperature = 0 }, prompt: [])
        let result = sampler.sample(logits, topCount: 2)
        let total = logits.map { Double($0).exponential }.reduce(0, +)
        #expect(abs(Double(result.logprob!.logprob) - (3.0 - total.logarithm)) < 1e-5)
        #expect(result.top.map(\.token) == [1, 2])
        var plain = TokenSampler(parameters: parameters { $0.temperature = 0 }, prompt: [])
        let unasked = plain.sample(logits, logprobs: false)
        #expect(unasked.token == result.token && unasked.logprob == nil && unasked.top.isEmpty)
    }
}

private extension Double {
    var exponential: Double { Foundation.exp(self) }
    var logarithm: Double { Foundation.log(self) }
}

import Foundation

@Suite struct TextAssemblerTests {
    /// A toy vocabulary: ids index into pieces of UTF-8 bytes, so a character can span tokens.
    static let pieces: [[UInt8]] = [Array("Hello".utf8), Array(" wor".utf8), Array("ld".utf8), Array("!".utf8),
                                    [0xF0, 0x9F], [0x98, 0x80], Array("END".utf8), Array("E".utf8), Array("ND".utf8), []]
    static let decode: @Sendable ([Int]) -> String = { ids in String(decoding: ids.flatMap { pieces[$0] }, as: UTF8.self) }

    func run(_ ids: [Int], stops: [String]) -> (text: String, pieces: [String], stopped: Bool) {
        var assembler = TextAssembler(decode: Self.decode, stopStrings: stops)
        var out: [String] = []
        for id in ids {
            let piece = assembler.append(id)
            out.append(piece.text)
            if piece.stopped { return (out.joined(), out, true) }
        }
        out.append(assembler.finish())
        return (out.joined(), out, false)
    }

    @Test func streamedPiecesConcatenateToTheFullDecode() {
        let ids = [0, 1, 2, 3, 4, 5, 3]
        let result = run(ids, stops: [])
        #expect(result.text == Self.decode(ids))
        #expect(result.pieces[4] == "") // first half of the emoji is held back
        #expect(result.pieces[5] == "😀")
    }

    @Test func stopStringAcrossTokenBoundariesIsCutAndNeverShown() {
        let result = run([0, 7, 8, 3], stops: ["END"])
        #expect(result.stopped)
        #expect(result.text == "Hello")
        #expect(!result.pieces.joined().contains("E"))
    }

    @Test func aHeldBackPrefixIsReleasedWhenItDoesNotComplete() {
        let result = run([0, 7, 3], stops: ["END"])
        #expect(!result.stopped)
        #expect(result.text == "HelloE!")
        #expect(result.pieces[1] == "") // "E" might have begun "END"
    }

    /// The work per token does not grow with a run of tokens whose text ends in U+FFFD (id 5 alone
    /// is two stray continuation bytes) or that decode to nothing (id 9): four times the tokens,
    /// about four times the work; the replacement characters go out, the text around still does.
    @Test func workIsLinearWhileTheTextCannotBeReleased() {
        func run(_ ids: [Int]) -> (text: String, work: Int) {
            var assembler = TextAssembler(decode: Self.decode, stopStrings: ["END"])
            var text = ""
            for id in ids { text += assembler.append(id).text }
            return (text + assembler.finish(), assembler.decodedIds)
        }
        for filler in [5, 9] {
            let one = run([0] + Array(repeating: filler, count: 1000) + [1, 2])
            let four = run([0] + Array(repeating: filler, count: 4000) + [1, 2])
            #expect(one.work > 0)
            #expect(Double(four.work) <= 4.2 * Double(one.work), "filler \(filler): \(one.work) → \(four.work)")
            // One U+FFFD per stray byte, none lost; nothing for the ids that decode to nothing.
            #expect(one.text == "Hello" + String(repeating: "\u{FFFD}", count: filler == 5 ? 2000 : 0) + " world", "filler \(filler)")
        }
    }
}
