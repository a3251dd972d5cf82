import Foundation

/// Jinja filters and tests (as `transformers` configures them: `tojson` is Python's `json.dumps`
/// with `ensure_ascii=False`).
enum TemplateFilters {
    private static func fail(_ message: String) -> TokenizerError {
        TokenizerError(file: "chat_template", message)
    }

    private static func kwarg(_ kwargs: [(String, TemplateValue)], _ name: String) -> TemplateValue? {
        kwargs.first { $0.0 == name }?.1
    }

    static func contains(_ container: TemplateValue, _ item: TemplateValue) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let sub) = item else { throw fail("'in <string>' requires a string") }
            if sub.isEmpty { return true }
            return s.utf8.count >= sub.utf8.count && TemplateMethods.find(s, sub) != nil
        case .array(let a): return a.contains { $0.pythonEquals(item) }
        case .object(let o):
            guard case .string(let k) = item else { return false }
            return o[k] != nil
        case .undefined: return false
        default: throw fail("argument of type '\(container.typeName)' is not iterable")
        }
    }

    static func length(_ v: TemplateValue) throws -> Int {
        switch v {
        case .string(let s): return s.unicodeScalars.count
        case .array(let a): return a.count
        case .object(let o): return o.count
        case .undefined: return 0
        default: throw fail("object of type '\(v.typeName)' has no len()")
        }
    }

    static func apply(
        _ name: String, _ value: TemplateValue, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]
    ) throws -> TemplateValue {
        switch name {
        case "trim":
            guard case .string(let s) = value else { return .string(TemplateMethods.pyStrip(value.pythonString, nil, left: true, right: true)) }
            var chars: String? = nil
            if case .string(let c)? = args.first { chars = c }
            return .string(TemplateMethods.pyStrip(s, chars, left: true, right: true))
        case "length", "count":
            return .int(try length(value))
        case "tojson":
            var indent: Int? = nil
            if case .int(let i)? = kwarg(kwargs, "indent") ?? args.first { indent = i }
            let sortKeys = kwarg(kwargs, "sort_keys")?.isTruthy ?? false
            // transformers' filter: `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
            var separators: (String, String)? = nil
            if case .array(let pair)? = kwarg(kwargs, "separators") ?? (args.count > 2 ? args[2] : nil), pair.count == 2,
               case .string(let item) = pair[0], case .string(let key) = pair[1] {
                separators = (item, key)
            }
            let json = try value.toJSON(indent: indent, sortKeys: sortKeys, separators: separators)
            let ensureASCII = kwarg(kwargs, "ensure_ascii")?.isTruthy ?? false
            return .string(ensureASCII ? TemplateValue.asciiEscaped(json) : json)
        case "string":
            return .string(value.pythonString)
        case "lower", "upper", "title", "capitalize":
            return try TemplateMethods.call(.string(value.pythonString), name, [], [])
        case "default", "d":
            let def = args.first ?? kwarg(kwargs, "default_value") ?? .string("")
            let boolean = (args.count > 1 ? args[1] : kwarg(kwargs, "boolean"))?.isTruthy ?? false
            if value.isUndefined || (boolean && !value.isTruthy) { return def }
            return value
        case "first":
            switch value {
            case .array(let a): return a.first ?? .undefined
            case .string(let s): return s.unicodeScalars.first.map { .string(String($0)) } ?? .undefined
            default: return .undefined
            }
        case "last":
            switch value {
            case .array(let a): return a.last ?? .undefined
            case .string(let s): return s.unicodeScalars.last.map { .string(String($0)) } ?? .undefined
            default: return .undefined
            }
        case "join":
            var sep = ""
            if case .string(let s)? = args.first ?? kwarg(kwargs, "d") { sep = s }
            var items = try iterable(value)
            if case .string(let attr)? = kwarg(kwargs, "attribute") { items = items.map { attribute($0, attr) } }
            return .string(items.map(\.pythonString).joined(separator: sep))
        case "list":
            return .array(try iterable(value))
        case "replace":
            guard args.count >= 2, case .string(let old) = args[0], case .string(let new) = args[1] else {
                throw fail("replace filter needs two strings")
            }
            return try TemplateMethods.call(.string(value.pythonString), "replace", [.string(old), .string(new)] + args.dropFirst(2), [])
        case "int":
            switch value {
            case .int: return value
            case .double(let d): return .int(Int(d))
            case .bool(let b): return .int(b ? 1 : 0)
            case .string(let s): return .int(Int(s.trimmingCharacters(in: .whitespaces)) ?? Int(Double(s) ?? 0))
            default: return args.first ?? .int(0)
            }
        case "float":
            switch value {
            case .int(let i): return .double(Double(i))
            case .double: return value
            case .string(let s): return .double(Double(s.trimmingCharacters(in: .whitespaces)) ?? 0)
            default: return args.first ?? .double(0)
            }
        case "abs":
            switch value {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            default: throw fail("bad operand type for abs(): '\(value.typeName)'")
            }
        case "round":
            guard let d = value.numeric else { throw fail("round needs a number") }
            var precision = 0
            if case .int(let p)? = args.first ?? kwarg(kwargs, "precision") { precision = p }
            let scale = pow(10.0, Double(precision))
            return .double((d * scale).rounded(.toNearestOrEven) / scale)
        case "items":
            guard case .object(let o) = value else {
                if value.isUndefined { return .array([]) }
                throw fail("items filter needs a mapping")
            }
            return .array(o.pairs.map { .array([.string($0.0), $0.1]) })
        case "selectattr", "rejectattr":
            guard case .string(let attr)? = args.first else { throw fail("\(name) needs an attribute name") }
            let items = try iterable(value)
            let keep = try items.filter { item in
                let a = attribute(item, attr)
                let r: Bool
                if args.count > 1, case .string(let testName) = args[1] {
                    r = try test(testName, a, Array(args.dropFirst(2)))
                } else {
                    r = a.isTruthy
                }
                return name == "selectattr" ? r : !r
            }
            return .array(keep)
        case "select", "reject":
            let items = try iterable(value)
            let keep = try items.filter { item in
                let r: Bool
                if case .string(let testName)? = args.first {
                    r = try test(testName, item, Array(args.dropFirst(1)))
                } else {
                    r = item.isTruthy
                }
                return name == "select" ? r : !r
            }
            return .array(keep)
        case "map":
            let items = try iterable(value)
            if case .string(let attr)? = kwarg(kwargs, "attribute") {
                let def = kwarg(kwargs, "default")
                return .array(items.map { item in
                    let a = attribute(item, attr)
                    return a.isUndefined ? (def ?? a) : a
                })
            }
            guard case .string(let filterName)? = args.first, TemplateParser.filters.contains(filterName) else {
                throw fail("map needs attribute= or a filter name")
            }
            return .array(try items.map { try apply(filterName, $0, Array(args.dropFirst()), []) })
        case "reverse":
            switch value {
            case .string(let s): return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed())))
            default: return .array(try iterable(value).reversed())
            }
        case "sort":
            var items = try iterable(value)
            let attr: String? = { if case .string(let a)? = kwarg(kwargs, "attribute") { return a } else { return nil } }()
            let reverse = (kwarg(kwargs, "reverse") ?? args.first)?.isTruthy ?? false
            var failure: TokenizerError? = nil
            items.sort { a, b in
                let x = attr.map { attribute(a, $0) } ?? a
                let y = attr.map { attribute(b, $0) } ?? b
                if let p = x.numeric, let q = y.numeric, x.isNumber, y.isNumber { return reverse ? p > q : p < q }
                if case .string(let p) = x, case .string(let q) = y {
                    let pl = p.lowercased(), ql = q.lowercased()
                    return reverse ? pl > ql : pl < ql
                }
                failure = fail("sort: values are not comparable")
                return false
            }
            if let failure { throw failure }
            return .array(items)
        case "unique":
            var out: [TemplateValue] = []
            for item in try iterable(value) where !out.contains(where: { $0.pythonEquals(item) }) { out.append(item) }
            return .array(out)
        case "safe":
            return value
        case "e", "escape":
            var s = ""
            for c in value.pythonString.unicodeScalars {
                switch c {
                case "&": s += "&amp;"
                case "<": s += "&lt;"
                case ">": s += "&gt;"
                case "\"": s += "&#34;"
                case "'": s += "&#39;"
                default: s.unicodeScalars.append(c)
                }
            }
            return .string(s)
        case "indent":
            var width = 4
            var prefix: String? = nil
            switch args.first ?? kwarg(kwargs, "width") {
            case .int(let w)?: width = w
            case .string(let p)?: prefix = p
            default: break
            }
            let indentation = prefix ?? String(repeating: " ", count: width)
            let first = (args.count > 1 ? args[1] : kwarg(kwargs, "first"))?.isTruthy ?? false
            let blank = (args.count > 2 ? args[2] : kwarg(kwargs, "blank"))?.isTruthy ?? false
            let lines = value.pythonString.components(separatedBy: "\n")
            var out: [String] = []
            for (i, line) in lines.enumerated() {
                if i == 0 && !first { out.append(line); continue }
                if line.isEmpty && !blank { out.append(line); continue }
                out.append(indentation + line)
            }
            return .string(out.joined(separator: "\n"))
        case "dictsort":
            guard case .object(let o) = value else { throw fail("dictsort needs a mapping") }
            return .array(o.pairs.sorted { $0.0.lowercased() < $1.0.lowercased() }.map { .array([.string($0.0), $0.1]) })
        case "max", "min":
            let items = try iterable(value)
            guard var best = items.first else { return .undefined }
            for item in items.dropFirst() {
                if let a = item.numeric, let b = best.numeric {
                    if name == "max" ? a > b : a < b { best = item }
                } else if case .string(let a) = item, case .string(let b) = best {
                    if name == "max" ? a > b : a < b { best = item }
                }
            }
            return best
        case "sum":
            var total: TemplateValue = .int(0)
            for item in try iterable(value) {
                if case .int(let a) = total, case .int(let b) = item { total = .int(a + b) }
                else if let a = total.numeric, let b = item.numeric { total = .double(a + b) }
                else { throw fail("sum of non-numbers") }
            }
            return total
        case "wordcount":
            return .int(value.pythonString.split(whereSeparator: { $0.isWhitespace }).count)
        default:
            throw fail("unsupported filter \"\(name)\"")
        }
    }

    static func iterable(_ value: TemplateValue) throws -> [TemplateValue] {
        switch value {
        case .array(let a): return a
        case .object(let o): return o.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        default: throw fail("'\(value.typeName)' object is not iterable")
        }
    }

    static func attribute(_ value: TemplateValue, _ name: String) -> TemplateValue {
        var current = value
        for part in name.split(separator: ".") {
            switch current {
            case .object(let o): current = o[String(part)] ?? .undefined
            case .namespace(let ns): current = ns[String(part)] ?? .undefined
            case .array(let a):
                if let i = Int(part), i >= 0, i < a.count { current = a[i] } else { return .undefined }
            default: return .undefined
            }
        }
        return current
    }

    static func test(_ name: String, _ value: TemplateValue, _ args: [TemplateValue]) throws -> Bool {
        switch name {
        case "defined": return !value.isUndefined
        case "undefined": return value.isUndefined
        case "none": if case .none = value { return true } else { return false }
        case "string": if case .string = value { return true } else { return false }
        case "number": return value.isNumber
        case "integer":
            if case .int = value { return true } else { return false }
        case "float": if case .double = value { return true } else { return false }
        case "mapping":
            switch value {
            case .object: return true
            default: return false
            }
        case "iterable":
            switch value {
            case .array, .object, .string, .undefined: return true
            default: return false
            }
        case "sequence":
            switch value {
            case .array, .object, .string: return true
            default: return false
            }
        case "boolean": if case .bool = value { return true } else { return false }
        case "true": if case .bool(true) = value { return true } else { return false }
        case "false": if case .bool(false) = value { return true } else { return false }
        case "callable": if case .function = value { return true } else { return false }
        case "odd", "even":
            guard case .int(let i) = value.asIntIfBool else { throw fail("\(name) test needs an integer") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard case .int(let i) = value, case .int(let d)? = args.first, d != 0 else {
                throw fail("divisibleby needs integers")
            }
            return i % d == 0
        case "lower": return value.pythonString == value.pythonString.lowercased()
        case "upper": return value.pythonString == value.pythonString.uppercased()
        case "eq", "equalto", "==", "sameas":
            guard let other = args.first else { throw fail("\(name) test needs an argument") }
            return value.pythonEquals(other)
        case "ne", "!=":
            guard let other = args.first else { throw fail("\(name) test needs an argument") }
            return !value.pythonEquals(other)
        case "in":
            guard let other = args.first else { throw fail("in test needs an argument") }
            return try contains(other, value)
        case "gt", "ge", "lt", "le":
            guard let a = value.numeric, let b = args.first?.numeric else { throw fail("\(name) test needs numbers") }
            switch name {
            case "gt": return a > b
            case "ge": return a >= b
            case "lt": return a < b
            default: return a <= b
            }
        default:
            throw fail("unsupported test \"\(name)\"")
        }
    }
}

/// Python methods of `str`, `dict` and `list` that chat templates call.
enum TemplateMethods {
    private static func fail(_ message: String) -> TokenizerError {
        TokenizerError(file: "chat_template", message)
    }

    /// Python's `str.isspace()` characters.
    static func isPythonSpace(_ c: Unicode.Scalar) -> Bool {
        c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
    }

    static func pyStrip(_ s: String, _ chars: String?, left: Bool, right: Bool) -> String {
        var u = Array(s.unicodeScalars)[...]
        let set = chars.map { Set($0.unicodeScalars) }
        func strip(_ c: Unicode.Scalar) -> Bool { set?.contains(c) ?? isPythonSpace(c) }
        if left { while let f = u.first, strip(f) { u.removeFirst() } }
        if right { while let l = u.last, strip(l) { u.removeLast() } }
        return String(String.UnicodeScalarView(u))
    }

    /// Index (in scalars) of the first occurrence of `sub` in `s`.
    static func find(_ s: String, _ sub: String, from start: Int = 0) -> Int? {
        let a = Array(s.unicodeScalars), b = Array(sub.unicodeScalars)
        if b.isEmpty { return min(start, a.count) }
        guard a.count >= b.count, start <= a.count - b.count else { return nil }
        for i in start...(a.count - b.count) where a[i] == b[0] {
            if Array(a[i..<(i + b.count)]) == b { return i }
        }
        return nil
    }

    static func split(_ s: String, _ sep: String?, maxsplit: Int) -> [String] {
        let u = Array(s.unicodeScalars)
        func str(_ x: ArraySlice<Unicode.Scalar>) -> String { String(String.UnicodeScalarView(x)) }
        guard let sep else {
            var parts: [String] = []
            var i = 0
            while i < u.count {
                while i < u.count && isPythonSpace(u[i]) { i += 1 }
                if i >= u.count { break }
                if maxsplit >= 0 && parts.count == maxsplit {
                    var end = u.count
                    while end > i && isPythonSpace(u[end - 1]) { end -= 1 }
                    parts.append(str(u[i..<end]))
                    return parts
                }
                var j = i
                while j < u.count && !isPythonSpace(u[j]) { j += 1 }
                parts.append(str(u[i..<j]))
                i = j
            }
            return parts
        }
        let p = Array(sep.unicodeScalars)
        var parts: [String] = []
        var start = 0
        var i = 0
        while i + p.count <= u.count && (maxsplit < 0 || parts.count < maxsplit) {
            if Array(u[i..<(i + p.count)]) == p {
                parts.append(str(u[start..<i]))
                i += p.count
                start = i
            } else {
                i += 1
            }
        }
        parts.append(str(u[start...]))
        return parts
    }

    static func call(
        _ base: TemplateValue, _ method: String, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]
    ) throws -> TemplateValue {
        func stringArg(_ i: Int) throws -> String? {
            guard i < args.count else { return nil }
            switch args[i] {
            case .string(let s): return s
            case .none: return nil
            default: throw fail("\(method)() argument must be a string")
            }
        }
        switch base {
        case .string(let s):
            switch method {
            case "strip": return .string(pyStrip(s, try stringArg(0), left: true, right: true))
            case "lstrip": return .string(pyStrip(s, try stringArg(0), left: true, right: false))
            case "rstrip": return .string(pyStrip(s, try stringArg(0), left: false, right: true))
            case "startswith", "endswith":
                let candidates: [String]
                switch args.first {
                case .string(let p)?: candidates = [p]
                case .array(let a)?: candidates = a.compactMap { if case .string(let p) = $0 { return p } else { return nil } }
                default: throw fail("\(method)() needs a string")
                }
                let u = Array(s.unicodeScalars)
                return .bool(candidates.contains { p in
                    let q = Array(p.unicodeScalars)
                    return method == "startswith" ? u.starts(with: q) : u.reversed().starts(with: q.reversed())
                })
            case "split", "rsplit":
                var maxsplit = -1
                if case .int(let m)? = (args.count > 1 ? args[1] : kwargs.first { $0.0 == "maxsplit" }?.1) { maxsplit = m }
                let sep: String?
                if case .string(let p)? = kwargs.first(where: { $0.0 == "sep" })?.1 { sep = p } else { sep = try stringArg(0) }
                if sep == "" { throw fail("empty separator") }
                if method == "rsplit" && maxsplit >= 0 {
                    // Split from the right: reverse, split, reverse back.
                    let r = String(String.UnicodeScalarView(s.unicodeScalars.reversed()))
                    let rs = sep.map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
                    return .array(split(r, rs, maxsplit: maxsplit).reversed().map {
                        .string(String(String.UnicodeScalarView($0.unicodeScalars.reversed())))
                    })
                }
                return .array(split(s, sep, maxsplit: maxsplit).map { .string($0) })
            case "replace":
                guard let old = try stringArg(0), let new = try stringArg(1) else { throw fail("replace() needs two strings") }
                var count = -1
                if args.count > 2, case .int(let c) = args[2] { count = c }
                if count < 0 { return .string(old.isEmpty ? s : split(s, old, maxsplit: -1).joined(separator: new)) }
                var parts = split(s, old.isEmpty ? nil : old, maxsplit: count)
                if old.isEmpty { parts = [s] }
                return .string(parts.joined(separator: new))
            case "upper": return .string(s.uppercased())
            case "lower": return .string(s.lowercased())
            case "title":
                var out = ""
                var previousCased = false
                for c in s.unicodeScalars {
                    let cased = c.properties.isCased
                    out += previousCased ? String(c).lowercased() : String(c).uppercased()
                    previousCased = cased
                }
                return .string(out)
            case "capitalize":
                guard let f = s.unicodeScalars.first else { return .string(s) }
                return .string(String(f).uppercased() + String(String.UnicodeScalarView(s.unicodeScalars.dropFirst())).lowercased())
            case "find", "index":
                guard let sub = try stringArg(0) else { throw fail("\(method)() needs a string") }
                if let i = find(s, sub) { return .int(i) }
                if method == "index" { throw fail("substring not found") }
                return .int(-1)
            case "rfind":
                guard let sub = try stringArg(0) else { throw fail("rfind() needs a string") }
                var last = -1
                var from = 0
                while let i = find(s, sub, from: from) { last = i; from = i + 1; if sub.isEmpty && i >= s.unicodeScalars.count { break } }
                return .int(last)
            case "count":
                guard let sub = try stringArg(0), !sub.isEmpty else { return .int(s.unicodeScalars.count + 1) }
                return .int(split(s, sub, maxsplit: -1).count - 1)
            case "join":
                return .string(try TemplateFilters.iterable(args.first ?? .array([])).map(\.pythonString).joined(separator: s))
            case "splitlines":
                var lines = s.components(separatedBy: "\n")
                if lines.last == "" { lines.removeLast() }
                return .array(lines.map { .string($0) })
            case "isdigit":
                return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType != nil })
            case "isalpha":
                return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic })
            case "isspace":
                return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(isPythonSpace))
            case "removeprefix":
                guard let p = try stringArg(0) else { return .string(s) }
                let u = Array(s.unicodeScalars), q = Array(p.unicodeScalars)
                return .string(u.starts(with: q) ? String(String.UnicodeScalarView(u.dropFirst(q.count))) : s)
            case "removesuffix":
                guard let p = try stringArg(0) else { return .string(s) }
                let u = Array(s.unicodeScalars), q = Array(p.unicodeScalars)
                return .string(u.reversed().starts(with: q.reversed()) && !q.isEmpty
                    ? String(String.UnicodeScalarView(u.dropLast(q.count))) : s)
            default: break
            }
        case .object(let o):
            switch method {
            case "items": return .array(o.pairs.map { .array([.string($0.0), $0.1]) })
            case "keys": return .array(o.keys.map { .string($0) })
            case "values": return .array(o.values)
            case "get":
                guard case .string(let k)? = args.first else { throw fail("get() needs a string key") }
                return o[k] ?? (args.count > 1 ? args[1] : .none)
            default: break
            }
        case .array(let a):
            switch method {
            case "count":
                guard let x = args.first else { throw fail("count() needs an argument") }
                return .int(a.filter { $0.pythonEquals(x) }.count)
            case "index":
                guard let x = args.first, let i = a.firstIndex(where: { $0.pythonEquals(x) }) else {
                    throw fail("value is not in list")
                }
                return .int(i)
            default: break
            }
        default: break
        }
        throw fail("'\(base.typeName)' object has no method '\(method)'")
    }
}
