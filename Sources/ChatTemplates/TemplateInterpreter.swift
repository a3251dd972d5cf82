import Foundation

/// Evaluates a parsed template.
final class TemplateInterpreter {
    private var scopes: [[String: TemplateValue]]
    private var output = ""

    private enum Flow { case normal, breakLoop, continueLoop }

    init(context: [String: TemplateValue]) {
        scopes = [context]
    }

    static func render(_ nodes: [TemplateNode], context: [String: TemplateValue]) throws -> String {
        let interpreter = TemplateInterpreter(context: context)
        _ = try interpreter.run(nodes)
        return interpreter.output
    }

    private func fail(_ message: String) -> TokenizerError {
        TokenizerError(file: "chat_template", message)
    }

    private func lookup(_ name: String) -> TemplateValue {
        for scope in scopes.reversed() {
            if let v = scope[name] { return v }
        }
        if let f = Self.builtins[name] { return .function(f) }
        return .undefined
    }

    private func assign(_ name: String, _ value: TemplateValue) {
        scopes[scopes.count - 1][name] = value
    }

    // MARK: statements

    private func run(_ nodes: [TemplateNode]) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t):
                output += t
            case .output(let e):
                output += try eval(e).pythonString
            case .ifChain(let branches, let elseBody):
                var taken = false
                for (cond, body) in branches where try eval(cond).isTruthy {
                    taken = true
                    let flow = try run(body)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try run(elseBody)
                    if flow != .normal { return flow }
                }
            case .forLoop(let targets, let iterableExpr, let condition, let body, let elseBody):
                try runFor(targets, iterableExpr, condition, body, elseBody)
            case .set(let target, let attribute, let expr):
                let value = try eval(expr)
                if let attribute {
                    guard case .namespace(let ns) = lookup(target) else {
                        throw fail("cannot assign attribute '\(attribute)' on '\(target)': it is not a namespace")
                    }
                    ns[attribute] = value
                } else {
                    assign(target, value)
                }
            case .setBlock(let target, let body):
                let saved = output
                output = ""
                _ = try run(body)
                let captured = output
                output = saved
                assign(target, .string(captured))
            case .macro(let name, let parameters, let body):
                assign(name, Self.macro(name, parameters, body, captured: scopes[0]))
            case .breakLoop:
                return .breakLoop
            case .continueLoop:
                return .continueLoop
            }
        }
        return .normal
    }

    /// Macro calls in progress in this render. A macro that calls itself (directly or through another
    /// macro) without end would otherwise recurse until the stack overflows, which a hostile or
    /// mistyped template must not do to the server (found by the chat_template fuzz target).
    @TaskLocal private static var macroDepth = 0
    /// Nested macro calls allowed: far more than any published chat template uses (at most 2-3).
    static let maximumMacroDepth = 64

    /// The function a `{% macro %}` defines, over the top-level names at its definition. It
    /// sees itself too, so it may recurse (gpt-oss's `render_typescript_type` does): each call
    /// makes the value anew rather than holding it, so no reference cycle outlives the render.
    private static func macro(_ name: String, _ parameters: [(String, TemplateExpr?)], _ body: [TemplateNode],
                              captured: [String: TemplateValue]) -> TemplateValue {
        .function(TemplateFunction(name: name) { args, kwargs in
            guard macroDepth < maximumMacroDepth else {
                throw TokenizerError(file: "chat_template", "macro \(name) nested more than \(maximumMacroDepth) calls deep (a macro calling itself without end?)")
            }
            return try $macroDepth.withValue(macroDepth + 1) {
                try callMacro(name, parameters, body, captured: captured, args: args, kwargs: kwargs)
            }
        })
    }

    /// One call of the macro: its parameters bound from the arguments (positional, then keyword, then
    /// defaults evaluated over the definition's names) and its body rendered to a string.
    private static func callMacro(_ name: String, _ parameters: [(String, TemplateExpr?)], _ body: [TemplateNode],
                                  captured: [String: TemplateValue], args: [TemplateValue],
                                  kwargs: [(String, TemplateValue)]) throws -> TemplateValue {
        var context = captured
        context[name] = macro(name, parameters, body, captured: captured)
        for (index, (param, defaultExpr)) in parameters.enumerated() {
            if index < args.count {
                context[param] = args[index]
            } else if let kw = kwargs.first(where: { $0.0 == param }) {
                context[param] = kw.1
            } else if let defaultExpr {
                context[param] = try TemplateInterpreter(context: captured).eval(defaultExpr)
            } else {
                context[param] = .undefined
            }
        }
        return .string(try TemplateInterpreter.render(body, context: context))
    }

    private func runFor(
        _ targets: [String], _ iterableExpr: TemplateExpr, _ condition: TemplateExpr?, _ body: [TemplateNode],
        _ elseBody: [TemplateNode]
    ) throws {
        var items = try iterate(eval(iterableExpr))
        if let condition {
            var kept: [TemplateValue] = []
            for item in items {
                scopes.append([:])
                try bind(targets, item)
                let ok = try eval(condition).isTruthy
                scopes.removeLast()
                if ok { kept.append(item) }
            }
            items = kept
        }
        if items.isEmpty {
            _ = try run(elseBody)
            return
        }
        let n = items.count
        for (index, item) in items.enumerated() {
            scopes.append([:])
            defer { scopes.removeLast() }
            try bind(targets, item)
            var loop = TemplateDictionary()
            loop["index"] = .int(index + 1)
            loop["index0"] = .int(index)
            loop["revindex"] = .int(n - index)
            loop["revindex0"] = .int(n - index - 1)
            loop["first"] = .bool(index == 0)
            loop["last"] = .bool(index == n - 1)
            loop["length"] = .int(n)
            loop["previtem"] = index > 0 ? items[index - 1] : .undefined
            loop["nextitem"] = index + 1 < n ? items[index + 1] : .undefined
            assign("loop", .object(loop))
            let flow = try run(body)
            if flow == .breakLoop { break }
        }
    }

    private func bind(_ targets: [String], _ item: TemplateValue) throws {
        if targets.count == 1 {
            assign(targets[0], item)
            return
        }
        let parts = try iterate(item)
        guard parts.count == targets.count else {
            throw fail("cannot unpack \(parts.count) values into \(targets.count) loop variables")
        }
        for (t, v) in zip(targets, parts) { assign(t, v) }
    }

    private func iterate(_ value: TemplateValue) throws -> [TemplateValue] {
        switch value {
        case .array(let a): return a
        case .object(let o): return o.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        default: throw fail("'\(value.typeName)' object is not iterable")
        }
    }

    // MARK: expressions

    func eval(_ expr: TemplateExpr) throws -> TemplateValue {
        switch expr {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items), .tuple(let items): return .array(try items.map(eval))
        case .dict(let items):
            var d = TemplateDictionary()
            for (k, v) in items {
                guard case .string(let key) = try eval(k) else { throw fail("dict keys must be strings") }
                d[key] = try eval(v)
            }
            return .object(d)
        case .attribute(let base, let name):
            return try attribute(eval(base), name, describe: base)
        case .subscriptIndex(let base, let indexExpr):
            let b = try eval(base)
            let index = try eval(indexExpr)
            if case .undefined = b { throw fail("\(describe(base)) is undefined") }
            return try subscriptValue(b, index)
        case .slice(let base, let start, let stop, let step):
            return try slice(eval(base), start.map(eval), stop.map(eval), step.map(eval))
        case .call(let callee, let argExprs, let kwargExprs):
            let args = try argExprs.map(eval)
            let kwargs = try kwargExprs.map { ($0.0, try eval($0.1)) }
            if case .attribute(let baseExpr, let method) = callee {
                let base = try eval(baseExpr)
                if case .undefined = base { throw fail("\(describe(baseExpr)) is undefined") }
                if case .object(let o) = base, let f = o[method], case .function(let fn) = f {
                    return try fn.call(args, kwargs)
                }
                return try TemplateMethods.call(base, method, args, kwargs)
            }
            let f = try eval(callee)
            guard case .function(let fn) = f else {
                throw fail("\(describe(callee)) is not callable (it is \(f.isUndefined ? "undefined" : f.typeName))")
            }
            return try fn.call(args, kwargs)
        case .filter(let base, let name, let argExprs, let kwargExprs):
            let value = try eval(base)
            let args = try argExprs.map(eval)
            let kwargs = try kwargExprs.map { ($0.0, try eval($0.1)) }
            return try TemplateFilters.apply(name, value, args, kwargs)
        case .test(let base, let name, let argExprs, let negated):
            let value = try eval(base)
            let args = try argExprs.map(eval)
            let result = try TemplateFilters.test(name, value, args)
            return .bool(negated ? !result : result)
        case .unary(let op, let operand):
            let v = try eval(operand)
            switch (op, v) {
            case ("-", .int(let i)): return .int(-i)
            case ("-", .double(let d)): return .double(-d)
            case ("+", .int), ("+", .double): return v
            default: throw fail("bad operand type for unary \(op): '\(v.typeName)'")
            }
        case .binary(let op, let l, let r):
            return try binary(op, eval(l), eval(r))
        case .compare(let first, let rest):
            var left = try eval(first)
            for (op, rightExpr) in rest {
                let right = try eval(rightExpr)
                if !(try compare(op, left, right)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .and(let l, let r):
            let lv = try eval(l)
            return lv.isTruthy ? try eval(r) : lv
        case .or(let l, let r):
            let lv = try eval(l)
            return lv.isTruthy ? lv : try eval(r)
        case .not(let e):
            return .bool(!(try eval(e).isTruthy))
        case .conditional(let cond, let then, let otherwise):
            if try eval(cond).isTruthy { return try eval(then) }
            return try otherwise.map(eval) ?? .undefined
        }
    }

    private func describe(_ e: TemplateExpr) -> String {
        switch e {
        case .name(let n): return "'\(n)'"
        case .attribute(let b, let n): return "\(describe(b)).\(n)"
        default: return "value"
        }
    }

    private func attribute(_ base: TemplateValue, _ name: String, describe baseExpr: TemplateExpr) throws -> TemplateValue {
        switch base {
        case .undefined: throw fail("\(describe(baseExpr)) is undefined")
        case .object(let o): return o[name] ?? .undefined
        case .namespace(let ns): return ns[name] ?? .undefined
        default: return .undefined
        }
    }

    private func subscriptValue(_ base: TemplateValue, _ index: TemplateValue) throws -> TemplateValue {
        switch (base, index) {
        case (.array(let a), .int(let i)):
            let k = i < 0 ? a.count + i : i
            return k >= 0 && k < a.count ? a[k] : .undefined
        case (.string(let s), .int(let i)):
            let u = Array(s.unicodeScalars)
            let k = i < 0 ? u.count + i : i
            return k >= 0 && k < u.count ? .string(String(u[k])) : .undefined
        case (.object(let o), .string(let key)): return o[key] ?? .undefined
        case (.namespace(let ns), .string(let key)): return ns[key] ?? .undefined
        default: return .undefined
        }
    }

    private func slice(_ base: TemplateValue, _ start: TemplateValue?, _ stop: TemplateValue?, _ step: TemplateValue?) throws -> TemplateValue {
        func intOrNil(_ v: TemplateValue?) throws -> Int? {
            guard let v else { return nil }
            switch v {
            case .none, .undefined: return nil
            case .int(let i): return i
            default: throw fail("slice indices must be integers")
            }
        }
        let st = try intOrNil(step) ?? 1
        guard st != 0 else { throw fail("slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            // Python's slice.indices.
            var lo = try intOrNil(start)
            var hi = try intOrNil(stop)
            if st > 0 {
                lo = lo.map { $0 < 0 ? max($0 + n, 0) : min($0, n) } ?? 0
                hi = hi.map { $0 < 0 ? max($0 + n, 0) : min($0, n) } ?? n
                return Array(stride(from: lo!, to: hi!, by: st))
            } else {
                lo = lo.map { $0 < 0 ? max($0 + n, -1) : min($0, n - 1) } ?? (n - 1)
                hi = hi.map { $0 < 0 ? max($0 + n, -1) : min($0, n - 1) } ?? -1
                return Array(stride(from: lo!, to: hi!, by: st))
            }
        }
        switch base {
        case .array(let a): return .array(try indices(a.count).map { a[$0] })
        case .string(let s):
            let u = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for i in try indices(u.count) { out.append(u[i]) }
            return .string(String(out))
        case .undefined: throw fail("cannot slice an undefined value")
        default: throw fail("'\(base.typeName)' object is not subscriptable")
        }
    }

    private func binary(_ op: String, _ l: TemplateValue, _ r: TemplateValue) throws -> TemplateValue {
        if op == "~" { return .string(l.pythonString + r.pythonString) }
        if l.isUndefined || r.isUndefined { throw fail("undefined value in '\(op)' expression") }
        switch (op, l, r) {
        case ("+", .string(let a), .string(let b)): return .string(a + b)
        case ("+", .array(let a), .array(let b)): return .array(a + b)
        case ("*", .string(let a), .int(let n)): return .string(String(repeating: a, count: max(n, 0)))
        case ("*", .array(let a), .int(let n)):
            return .array(Array(repeatElement(a, count: max(n, 0)).joined()))
        default: break
        }
        if case .int(let a) = l.asIntIfBool, case .int(let b) = r.asIntIfBool {
            switch op {
            case "+": return .int(a &+ b)
            case "-": return .int(a &- b)
            case "*": return .int(a &* b)
            case "/":
                guard b != 0 else { throw fail("division by zero") }
                return .double(Double(a) / Double(b))
            case "//":
                guard b != 0 else { throw fail("integer division by zero") }
                return .int(Int((Double(a) / Double(b)).rounded(.down)))
            case "%":
                guard b != 0 else { throw fail("modulo by zero") }
                let m = a % b
                return .int(m != 0 && (m < 0) != (b < 0) ? m + b : m)
            case "**":
                if b >= 0 {
                    var result = 1
                    for _ in 0..<b { result = result &* a }
                    return .int(result)
                }
                return .double(pow(Double(a), Double(b)))
            default: break
            }
        }
        if let a = l.numeric, let b = r.numeric, l.isNumber, r.isNumber {
            switch op {
            case "+": return .double(a + b)
            case "-": return .double(a - b)
            case "*": return .double(a * b)
            case "/":
                guard b != 0 else { throw fail("division by zero") }
                return .double(a / b)
            case "//":
                guard b != 0 else { throw fail("division by zero") }
                return .double((a / b).rounded(.down))
            case "%":
                guard b != 0 else { throw fail("modulo by zero") }
                let m = fmod(a, b)
                return .double(m != 0 && (m < 0) != (b < 0) ? m + b : m)
            case "**": return .double(pow(a, b))
            default: break
            }
        }
        throw fail("unsupported operand types for \(op): '\(l.typeName)' and '\(r.typeName)'")
    }

    private func compare(_ op: String, _ l: TemplateValue, _ r: TemplateValue) throws -> Bool {
        switch op {
        case "==": return l.pythonEquals(r)
        case "!=": return !l.pythonEquals(r)
        case "in": return try TemplateFilters.contains(r, l)
        case "notin": return !(try TemplateFilters.contains(r, l))
        default: break
        }
        let order: Int
        if l.isNumber, r.isNumber, let a = l.numeric, let b = r.numeric {
            order = a < b ? -1 : (a > b ? 1 : 0)
        } else if case .string(let a) = l, case .string(let b) = r {
            let x = Array(a.unicodeScalars.map(\.value)), y = Array(b.unicodeScalars.map(\.value))
            order = x.lexicographicallyPrecedes(y) ? -1 : (x == y ? 0 : 1)
        } else {
            throw fail("'\(op)' not supported between '\(l.typeName)' and '\(r.typeName)'")
        }
        switch op {
        case "<": return order < 0
        case ">": return order > 0
        case "<=": return order <= 0
        case ">=": return order >= 0
        default: throw fail("unknown comparison \(op)")
        }
    }

    // MARK: global functions

    static let builtins: [String: TemplateFunction] = [
        "raise_exception": TemplateFunction(name: "raise_exception") { args, _ in
            throw TokenizerError(file: "chat_template", "raise_exception: \(args.first?.pythonString ?? "")")
        },
        "namespace": TemplateFunction(name: "namespace") { args, kwargs in
            var d = TemplateDictionary()
            if case .object(let o)? = args.first { d = o }
            for (k, v) in kwargs { d[k] = v }
            return .namespace(TemplateNamespace(d))
        },
        "dict": TemplateFunction(name: "dict") { args, kwargs in
            var d = TemplateDictionary()
            if case .object(let o)? = args.first { d = o }
            for (k, v) in kwargs { d[k] = v }
            return .object(d)
        },
        "range": TemplateFunction(name: "range") { args, _ in
            let ints = args.compactMap { v -> Int? in if case .int(let i) = v { return i } else { return nil } }
            guard ints.count == args.count, (1...3).contains(ints.count) else {
                throw TokenizerError(file: "chat_template", "range() takes 1 to 3 integers")
            }
            let (lo, hi, st) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
            guard st != 0 else { throw TokenizerError(file: "chat_template", "range() step must not be zero") }
            let values = Array(stride(from: lo, to: hi, by: st))
            guard values.count <= 100_000 else { throw TokenizerError(file: "chat_template", "range() too large") }
            return .array(values.map { .int($0) })
        },
        "strftime_now": TemplateFunction(name: "strftime_now") { args, _ in
            guard case .string(let format)? = args.first else {
                throw TokenizerError(file: "chat_template", "strftime_now() needs a format string")
            }
            var t = time(nil)
            var tmValue = tm()
            localtime_r(&t, &tmValue)
            var buffer = [Int8](repeating: 0, count: 256)
            let n = strftime(&buffer, buffer.count, format, &tmValue)
            return .string(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        },
    ]
}

extension TemplateValue {
    var isNumber: Bool {
        switch self {
        case .int, .double, .bool: return true
        default: return false
        }
    }

    var asIntIfBool: TemplateValue {
        if case .bool(let b) = self { return .int(b ? 1 : 0) }
        return self
    }
}
