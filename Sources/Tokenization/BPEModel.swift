import Foundation

/// The `model` section of `tokenizer.json` for `"type": "BPE"`.
///
/// Merging follows `tokenizers`' `Word::merge_all`: repeatedly apply the applicable merge of lowest
/// rank, leftmost first, until none applies.
final class BPEModel: @unchecked Sendable {
    let vocab: [String: Int]
    let idToToken: [Int: String]
    /// Single-scalar tokens by scalar value: the initial symbols of a word.
    let scalarToId: [UInt32: Int32]
    /// `(left << 32 | right)` → `(rank << 32 | newId)`.
    let merges: [UInt64: UInt64]
    let unkId: Int?
    let fuseUnk: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool
    /// True when "▁" is a token and no token has "▁" after another character: then no merge can join
    /// symbols across the start of a "▁" run, and a SentencePiece-style input without a pre-tokenizer can
    /// be cut there into words (which makes them cacheable) without changing the result.
    let splittableAtSpaceMarker: Bool
    /// `<0xXX>` token ids, -1 where absent.
    let byteFallbackIds: [Int32]

    /// Single-scalar token ids for scalar values below `lowScalarLimit` (-1 where absent): a faster
    /// path than `scalarToId` for the byte-level alphabet and Latin text.
    private let lowScalarToId: [Int32]
    private static let lowScalarLimit = 0x800

    private let cache = WordCache()
    /// `merges` in a faster table for the merge loop.
    private let pairTable: PairTable

    init(_ json: JSONObject) throws {
        let file = json.file
        if let dropout = json.raw("dropout")?.doubleValue, dropout != 0 {
            throw TokenizerError(file: file, "unsupported BPE dropout \(dropout) at \(json.path)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = json.optionalString(key), !s.isEmpty {
                throw TokenizerError(file: file, "unsupported BPE \(key) \(s.debugDescription) at \(json.path)")
            }
        }
        guard let vocabDict = json.raw("vocab")?.objectValue else {
            throw TokenizerError(file: file, "expected an object at \(json.path).vocab")
        }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(vocabDict.count)
        var idToToken: [Int: String] = [:]
        idToToken.reserveCapacity(vocabDict.count)
        var scalarToId: [UInt32: Int32] = [:]
        for (token, value) in vocabDict {
            guard let id = value.intValue, id >= 0 else {
                throw TokenizerError(file: file, "vocab entry \(token.debugDescription) has no integer id")
            }
            vocab[token] = id
            idToToken[id] = token
            let scalars = token.unicodeScalars
            if scalars.count == 1 { scalarToId[scalars.first!.value] = Int32(id) }
        }
        self.vocab = vocab
        self.idToToken = idToToken
        self.scalarToId = scalarToId

        let rawMerges = try json.array("merges")
        var merges: [UInt64: UInt64] = [:]
        merges.reserveCapacity(rawMerges.count)
        for (rank, m) in rawMerges.enumerated() {
            let left: String, right: String
            if let s = m.stringValue {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw TokenizerError(file: file, "malformed merge \(s.debugDescription) at \(json.path).merges[\(rank)]")
                }
                left = String(parts[0]); right = String(parts[1])
            } else if let a = m.arrayValue, a.count == 2, let l = a[0].stringValue, let r = a[1].stringValue {
                left = l; right = r
            } else {
                throw TokenizerError(file: file, "malformed merge at \(json.path).merges[\(rank)]")
            }
            guard let l = vocab[left], let r = vocab[right] else {
                throw TokenizerError(file: file, "merge \(left.debugDescription) + \(right.debugDescription) uses a token missing from the vocab")
            }
            guard let merged = vocab[left + right] else {
                throw TokenizerError(file: file, "merge result \((left + right).debugDescription) is missing from the vocab")
            }
            let key = UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))
            if merges[key] == nil { merges[key] = UInt64(rank) << 32 | UInt64(UInt32(merged)) }
        }
        self.merges = merges

        if let unk = json.optionalString("unk_token") {
            guard let id = vocab[unk] else {
                throw TokenizerError(file: file, "unk_token \(unk.debugDescription) is not in the vocab")
            }
            unkId = id
        } else {
            unkId = nil
        }
        let marker: Unicode.Scalar = "\u{2581}"
        splittableAtSpaceMarker = vocab["\u{2581}"] != nil && !vocab.keys.contains { token in
            var previous: Unicode.Scalar? = nil
            for c in token.unicodeScalars {
                if c == marker, let p = previous, p != marker { return true }
                previous = c
            }
            return false
        }
        fuseUnk = json.bool("fuse_unk", default: false)
        byteFallback = json.bool("byte_fallback", default: false)
        ignoreMerges = json.bool("ignore_merges", default: false)
        var fallback = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            let name = "<0x" + String(format: "%02X", b) + ">"
            if let id = vocab[name] { fallback[b] = Int32(id) }
        }
        byteFallbackIds = fallback
        var low = [Int32](repeating: -1, count: Self.lowScalarLimit)
        for (v, id) in scalarToId where Int(v) < Self.lowScalarLimit { low[Int(v)] = id }
        lowScalarToId = low
        pairTable = PairTable(merges)
    }

    /// Appends the ids of one pre-tokenized word to `out`.
    func tokenize(_ scalars: ArraySlice<Unicode.Scalar>, into out: inout [Int]) {
        let n = scalars.count
        if n == 0 { return }
        let cacheable = n <= WordCache.width
        var h: UInt64 = 0
        if cacheable {
            h = WordCache.hash(scalars)
            if cache.lookup(scalars, hash: h, into: &out) { return }
        }
        var symbols: [Int32]
        var key = ""
        if ignoreMerges {
            key.unicodeScalars.append(contentsOf: scalars)
        }
        if ignoreMerges, let id = vocab[key] {
            symbols = [Int32(id)]
        } else {
            symbols = initialSymbols(scalars)
            merge(&symbols)
        }
        if cacheable { cache.store(scalars, hash: h, ids: symbols) }
        for id in symbols { out.append(Int(id)) }
    }

    /// One symbol per character, with byte fallback and unknown-token handling as `BPE::merge_word`.
    private func initialSymbols(_ scalars: ArraySlice<Unicode.Scalar>) -> [Int32] {
        var symbols: [Int32] = []
        symbols.reserveCapacity(scalars.count)
        var pendingUnk = false
        for s in scalars {
            let low = Int(s.value) < Self.lowScalarLimit ? lowScalarToId[Int(s.value)] : -1
            if let id = low >= 0 ? low : (Int(s.value) < Self.lowScalarLimit ? nil : scalarToId[s.value]) {
                if pendingUnk, let u = unkId { symbols.append(Int32(u)); pendingUnk = false }
                symbols.append(id)
                continue
            }
            if byteFallback {
                var ids: [Int32] = []
                var ok = true
                for b in UTF8.encode(s)! {
                    let id = byteFallbackIds[Int(b)]
                    if id < 0 { ok = false; break }
                    ids.append(id)
                }
                if ok {
                    if pendingUnk, let u = unkId { symbols.append(Int32(u)); pendingUnk = false }
                    symbols.append(contentsOf: ids)
                    continue
                }
            }
            guard let u = unkId else { continue }
            if fuseUnk {
                pendingUnk = true
            } else {
                if pendingUnk { symbols.append(Int32(u)) }
                pendingUnk = true
            }
        }
        if pendingUnk, let u = unkId { symbols.append(Int32(u)) }
        return symbols
    }

    /// Applies merges in rank order (leftmost first among equal ranks).
    private func merge(_ symbols: inout [Int32]) {
        let n = symbols.count
        if n < 2 { return }
        var next = [Int32](unsafeUninitializedCapacity: n) { b, c in
            for i in 0..<n { b[i] = Int32(i + 1) }
            b[n - 1] = -1
            c = n
        }
        var prev = [Int32](unsafeUninitializedCapacity: n) { b, c in
            for i in 0..<n { b[i] = Int32(i - 1) }
            c = n
        }
        var alive = [Bool](repeating: true, count: n)
        var heap = MinHeap()
        let table = pairTable
        @inline(__always) func lookup(_ a: Int32, _ b: Int32) -> UInt64? {
            table.get(UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)))
        }
        for i in 0..<(n - 1) {
            if let m = lookup(symbols[i], symbols[i + 1]) { heap.push((m >> 32) << 32 | UInt64(i)) }
        }
        while let top = heap.pop() {
            let pos = Int(top & 0xFFFF_FFFF)
            let rank = top >> 32
            guard alive[pos] else { continue }
            let nx = Int(next[pos])
            guard nx >= 0, let m = lookup(symbols[pos], symbols[nx]), m >> 32 == rank else { continue }
            symbols[pos] = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
            alive[nx] = false
            let nn = next[nx]
            next[pos] = nn
            if nn >= 0 { prev[Int(nn)] = Int32(pos) }
            let p = prev[pos]
            if p >= 0, let m2 = lookup(symbols[Int(p)], symbols[pos]) {
                heap.push((m2 >> 32) << 32 | UInt64(p))
            }
            if nn >= 0, let m2 = lookup(symbols[pos], symbols[Int(nn)]) {
                heap.push((m2 >> 32) << 32 | UInt64(pos))
            }
        }
        var result: [Int32] = []
        result.reserveCapacity(n)
        var i: Int32 = 0
        while i >= 0 {
            result.append(symbols[Int(i)])
            i = next[Int(i)]
        }
        symbols = result
    }
}

/// A binary min-heap of packed `(rank << 32 | position)` keys.
struct MinHeap {
    private var items: [UInt64] = []

    mutating func push(_ x: UInt64) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if items[parent] <= items[i] { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> UInt64? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if items.isEmpty { return first }
        items[0] = last
        var i = 0
        let n = items.count
        while true {
            let l = 2 * i + 1
            if l >= n { break }
            var m = l
            if l + 1 < n && items[l + 1] < items[l] { m = l + 1 }
            if items[i] <= items[m] { break }
            items.swapAt(i, m)
            i = m
        }
        return first
    }
}
