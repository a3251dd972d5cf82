/// Expressions of the supported Jinja subset.
indirect enum TemplateExpr: Sendable {
    case literal(TemplateValue)
    case name(String)
    case list([TemplateExpr])
    case tuple([TemplateExpr])
    case dict([(TemplateExpr, TemplateExpr)])
    case attribute(TemplateExpr, String)
    case subscriptIndex(TemplateExpr, TemplateExpr)
    case slice(TemplateExpr, TemplateExpr?, TemplateExpr?, TemplateExpr?)
    case call(TemplateExpr, [TemplateExpr], [(String, TemplateExpr)])
    case filter(TemplateExpr, String, [TemplateExpr], [(String, TemplateExpr)])
    case test(TemplateExpr, String, [TemplateExpr], negated: Bool)
    case unary(String, TemplateExpr)
    case binary(String, TemplateExpr, TemplateExpr)
    case compare(TemplateExpr, [(String, TemplateExpr)])
    case and(TemplateExpr, TemplateExpr)
    case or(TemplateExpr, TemplateExpr)
    case not(TemplateExpr)
    case conditional(TemplateExpr, TemplateExpr, TemplateExpr?)
}

/// Statements.
indirect enum TemplateNode: Sendable {
    case text(String)
    case output(TemplateExpr)
    case ifChain([(TemplateExpr, [TemplateNode])], [TemplateNode])
    case forLoop(targets: [String], iterable: TemplateExpr, condition: TemplateExpr?, body: [TemplateNode],
                 elseBody: [TemplateNode])
    case set(target: String, attribute: String?, TemplateExpr)
    case setBlock(target: String, [TemplateNode])
    case macro(name: String, parameters: [(String, TemplateExpr?)], body: [TemplateNode])
    case breakLoop
    case continueLoop
}

/// Recursive-descent parser for the Jinja subset, following Jinja's own precedence rules.
struct TemplateParser {
    private var tokens: [TemplateToken]
    private var i = 0
    /// Blocks and expressions currently open (see `maxDepth`).
    private var depth = 0

    /// How deep blocks (`if`, `for`, `macro`, `set` blocks) and expressions (parentheses, lists, dicts,
    /// call arguments, `not`, unary signs, conditional chains, and each link of an operator, filter or
    /// postfix chain such as `a + b + c`, `x|f|g`, `a.b[c]()`, which nests the tree one level more)
    /// may nest, counted together. Real templates stay below 20; without a limit a hostile template
    /// (`((((...`, `{% if %}` a thousand deep, `1+1+...+1`) overflows the stack, in the parser or
    /// when rendering and freeing the tree.
    static let maxDepth = 100

    static let filters: Set<String> = [
        "trim", "length", "count", "tojson", "string", "lower", "upper", "title", "capitalize", "default", "d",
        "first", "last", "join", "list", "replace", "int", "float", "abs", "items", "selectattr", "rejectattr",
        "select", "reject", "map", "reverse", "sort", "safe", "unique", "round", "indent", "dictsort", "max",
        "min", "sum", "e", "escape", "wordcount",
    ]
    static let tests: Set<String> = [
        "defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable",
        "sequence", "boolean", "true", "false", "callable", "odd", "even", "lower", "upper", "eq", "equalto",
        "==", "ne", "!=", "in", "divisibleby", "gt", "ge", "lt", "le", "sameas",
    ]
    static let methods: Set<String> = [
        "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "replace", "upper", "lower",
        "title", "capitalize", "find", "rfind", "index", "count", "join", "items", "keys", "values", "get",
        "splitlines", "isdigit", "isalpha", "isspace", "removeprefix", "removesuffix",
    ]

    static func parse(_ source: String) throws -> [TemplateNode] {
        var p = TemplateParser(tokens: try TemplateLexer.tokenize(source))
        let (body, end) = try p.parseBody(until: [])
        guard end == nil else { throw p.error("unexpected '\(end!)'") }
        return body
    }

    private init(tokens: [TemplateToken]) { self.tokens = tokens }

    private func error(_ message: String) -> TokenizerError {
        TokenizerError(file: "chat_template", message)
    }

    /// Opens one nesting level; pair with `defer { depth -= 1 }`.
    private mutating func enter() throws {
        depth += 1
        if depth > Self.maxDepth {
            throw error("blocks and expressions nest deeper than \(Self.maxDepth) levels")
        }
    }

    private var current: TemplateToken { tokens[i] }
    private var next: TemplateToken { i + 1 < tokens.count ? tokens[i + 1] : .eof }

    private mutating func advance() -> TemplateToken {
        let t = tokens[i]
        if i < tokens.count - 1 { i += 1 }
        return t
    }

    private mutating func expectOp(_ op: String) throws {
        guard case .op(op) = advance() else { throw error("expected '\(op)'") }
    }

    private mutating func expectName() throws -> String {
        guard case .name(let n) = advance() else { throw error("expected a name") }
        return n
    }

    private mutating func expectBlockEnd() throws {
        guard case .blockEnd = advance() else { throw error("expected '%}'") }
    }

    private func isOp(_ op: String) -> Bool { if case .op(op) = current { return true } else { return false } }
    private func isName(_ n: String) -> Bool { if case .name(n) = current { return true } else { return false } }

    /// Parses nodes until a block tag whose keyword is in `until`; returns that keyword (already consumed
    /// up to, but not including, the rest of its tag).
    private mutating func parseBody(until: Set<String>) throws -> ([TemplateNode], String?) {
        var nodes: [TemplateNode] = []
        while true {
            switch current {
            case .eof:
                if !until.isEmpty { throw error("missing {% \(until.sorted().joined(separator: " or ")) %}") }
                return (nodes, nil)
            case .text(let t):
                _ = advance()
                nodes.append(.text(t))
            case .variableBegin:
                _ = advance()
                let e = try parseExpression()
                guard case .variableEnd = advance() else { throw error("expected '}}'") }
                nodes.append(.output(e))
            case .blockBegin:
                guard case .name(let keyword) = next else { throw error("expected a statement after '{%'") }
                if until.contains(keyword) {
                    _ = advance()
                    _ = advance()
                    return (nodes, keyword)
                }
                _ = advance()
                _ = advance()
                nodes.append(try parseStatement(keyword))
            default:
                throw error("unexpected token \(current)")
            }
        }
    }

    private mutating func parseStatement(_ keyword: String) throws -> TemplateNode {
        try enter()
        defer { depth -= 1 }
        switch keyword {
        case "if":
            var branches: [(TemplateExpr, [TemplateNode])] = []
            var cond = try parseExpression()
            try expectBlockEnd()
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((cond, body))
                if end == "elif" {
                    cond = try parseExpression()
                    try expectBlockEnd()
                    continue
                }
                if end == "else" {
                    try expectBlockEnd()
                    let (elseBody, _) = try parseBody(until: ["endif"])
                    try expectBlockEnd()
                    return .ifChain(branches, elseBody)
                }
                try expectBlockEnd()
                return .ifChain(branches, [])
            }
        case "for":
            var targets = [try expectName()]
            while isOp(",") {
                _ = advance()
                targets.append(try expectName())
            }
            guard isName("in") else { throw error("expected 'in' in a for loop") }
            _ = advance()
            let iterable = try parseConditional(allowConditional: false)
            var condition: TemplateExpr? = nil
            if isName("if") {
                _ = advance()
                condition = try parseExpression()
            }
            if isName("recursive") { throw error("unsupported recursive for loop") }
            try expectBlockEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"])
            var elseBody: [TemplateNode] = []
            try expectBlockEnd()
            if end == "else" {
                (elseBody, _) = try parseBody(until: ["endfor"])
                try expectBlockEnd()
            }
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, elseBody: elseBody)
        case "set":
            let target = try expectName()
            var attribute: String? = nil
            if isOp(".") {
                _ = advance()
                attribute = try expectName()
            }
            if case .blockEnd = current, attribute == nil {
                _ = advance()
                let (body, _) = try parseBody(until: ["endset"])
                try expectBlockEnd()
                return .setBlock(target: target, body)
            }
            if isOp(",") { throw error("unsupported tuple assignment in set") }
            try expectOp("=")
            let value = try parseExpression()
            try expectBlockEnd()
            return .set(target: target, attribute: attribute, value)
        case "macro":
            let name = try expectName()
            try expectOp("(")
            var params: [(String, TemplateExpr?)] = []
            while !isOp(")") {
                let p = try expectName()
                var def: TemplateExpr? = nil
                if isOp("=") {
                    _ = advance()
                    def = try parseExpression()
                }
                params.append((p, def))
                if isOp(",") { _ = advance() } else { break }
            }
            try expectOp(")")
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endmacro"])
            if case .name = current { _ = advance() }  // {% endmacro name %}
            try expectBlockEnd()
            return .macro(name: name, parameters: params, body: body)
        case "break":
            try expectBlockEnd()
            return .breakLoop
        case "continue":
            try expectBlockEnd()
            return .continueLoop
        case "generation":
            // transformers' AssistantTracker extension: renders its body unchanged.
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endgeneration"])
            try expectBlockEnd()
            return .ifChain([(.literal(.bool(true)), body)], [])
        default:
            throw error("unsupported tag \"\(keyword)\"")
        }
    }

    // MARK: expressions (Jinja precedence)

    mutating func parseExpression() throws -> TemplateExpr { try parseConditional(allowConditional: true) }

    private mutating func parseConditional(allowConditional: Bool) throws -> TemplateExpr {
        try enter()
        defer { depth -= 1 }
        var expr = try parseOr()
        var chained = 0
        defer { depth -= chained }
        while allowConditional && isName("if") {
            try enter()
            chained += 1
            _ = advance()
            let cond = try parseOr()
            var elseExpr: TemplateExpr? = nil
            if isName("else") {
                _ = advance()
                elseExpr = try parseConditional(allowConditional: true)
            }
            expr = .conditional(cond, expr, elseExpr)
        }
        return expr
    }

    private mutating func parseOr() throws -> TemplateExpr {
        var left = try parseAnd()
        var chained = 0
        defer { depth -= chained }
        while isName("or") {
            try enter()
            chained += 1
            _ = advance()
            left = .or(left, try parseAnd())
        }
        return left
    }

    private mutating func parseAnd() throws -> TemplateExpr {
        var left = try parseNot()
        var chained = 0
        defer { depth -= chained }
        while isName("and") {
            try enter()
            chained += 1
            _ = advance()
            left = .and(left, try parseNot())
        }
        return left
    }

    private mutating func parseNot() throws -> TemplateExpr {
        if isName("not") {
            _ = advance()
            try enter()
            defer { depth -= 1 }
            return .not(try parseNot())
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> TemplateExpr {
        let left = try parseMath1()
        var ops: [(String, TemplateExpr)] = []
        while true {
            if case .op(let o) = current, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                _ = advance()
                ops.append((o, try parseMath1()))
            } else if isName("in") {
                _ = advance()
                ops.append(("in", try parseMath1()))
            } else if isName("not"), case .name("in") = next {
                _ = advance()
                _ = advance()
                ops.append(("notin", try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? left : .compare(left, ops)
    }

    private mutating func parseMath1() throws -> TemplateExpr {
        var left = try parseConcat()
        var chained = 0
        defer { depth -= chained }
        while case .op(let o) = current, o == "+" || o == "-" {
            try enter()
            chained += 1
            _ = advance()
            left = .binary(o, left, try parseConcat())
        }
        return left
    }

    private mutating func parseConcat() throws -> TemplateExpr {
        var left = try parseMath2()
        var chained = 0
        defer { depth -= chained }
        while isOp("~") {
            try enter()
            chained += 1
            _ = advance()
            left = .binary("~", left, try parseMath2())
        }
        return left
    }

    private mutating func parseMath2() throws -> TemplateExpr {
        var left = try parsePow()
        var chained = 0
        defer { depth -= chained }
        while case .op(let o) = current, ["*", "/", "//", "%"].contains(o) {
            try enter()
            chained += 1
            _ = advance()
            left = .binary(o, left, try parsePow())
        }
        return left
    }

    private mutating func parsePow() throws -> TemplateExpr {
        var left = try parseUnary(withFilter: true)
        var chained = 0
        defer { depth -= chained }
        while isOp("**") {
            try enter()
            chained += 1
            _ = advance()
            left = .binary("**", left, try parseUnary(withFilter: true))
        }
        return left
    }

    private mutating func parseUnary(withFilter: Bool) throws -> TemplateExpr {
        var node: TemplateExpr
        if isOp("-") || isOp("+") {
            let sign = isOp("-") ? "-" : "+"
            _ = advance()
            try enter()
            defer { depth -= 1 }
            node = .unary(sign, try parseUnary(withFilter: false))
        } else {
            node = try parsePrimary()
        }
        node = try parsePostfix(node)
        if withFilter { node = try parseFilterExpr(node) }
        return node
    }

    private mutating func parsePrimary() throws -> TemplateExpr {
        switch advance() {
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .string(var s):
            while case .string(let more) = current {  // adjacent literals concatenate
                _ = advance()
                s += more
            }
            return .literal(.string(s))
        case .int(let v): return .literal(.int(v))
        case .float(let v): return .literal(.double(v))
        case .op("("):
            if isOp(")") {
                _ = advance()
                return .tuple([])
            }
            let first = try parseExpression()
            if isOp(",") {
                var items = [first]
                while isOp(",") {
                    _ = advance()
                    if isOp(")") { break }
                    items.append(try parseExpression())
                }
                try expectOp(")")
                return .tuple(items)
            }
            try expectOp(")")
            return first
        case .op("["):
            var items: [TemplateExpr] = []
            while !isOp("]") {
                items.append(try parseExpression())
                if isOp(",") { _ = advance() } else { break }
            }
            try expectOp("]")
            return .list(items)
        case .op("{"):
            var items: [(TemplateExpr, TemplateExpr)] = []
            while !isOp("}") {
                let k = try parseExpression()
                try expectOp(":")
                items.append((k, try parseExpression()))
                if isOp(",") { _ = advance() } else { break }
            }
            try expectOp("}")
            return .dict(items)
        case let t:
            throw error("unexpected \(t) in an expression")
        }
    }

    private mutating func parsePostfix(_ node: TemplateExpr) throws -> TemplateExpr {
        var node = node
        var chained = 0
        defer { depth -= chained }
        while true {
            if isOp(".") || isOp("[") || isOp("(") {
                try enter()
                chained += 1
            }
            if isOp(".") {
                _ = advance()
                switch advance() {
                case .name(let n): node = .attribute(node, n)
                case .int(let k): node = .subscriptIndex(node, .literal(.int(k)))
                default: throw error("expected an attribute name after '.'")
                }
            } else if isOp("[") {
                _ = advance()
                node = try parseSubscript(node)
            } else if isOp("(") {
                _ = advance()
                let (args, kwargs) = try parseArguments()
                if case .attribute(_, let method) = node, !Self.methods.contains(method) {
                    throw error("unsupported method \"\(method)\"")
                }
                node = .call(node, args, kwargs)
            } else {
                return node
            }
        }
    }

    private mutating func parseSubscript(_ node: TemplateExpr) throws -> TemplateExpr {
        var parts: [TemplateExpr?] = []
        var current: TemplateExpr? = nil
        var isSlice = false
        while !isOp("]") {
            if isOp(":") {
                _ = advance()
                parts.append(current)
                current = nil
                isSlice = true
                continue
            }
            current = try parseExpression()
        }
        _ = advance()
        parts.append(current)
        if !isSlice {
            guard let index = parts[0] else { throw error("empty subscript") }
            return .subscriptIndex(node, index)
        }
        guard parts.count <= 3 else { throw error("bad slice") }
        while parts.count < 3 { parts.append(nil) }
        return .slice(node, parts[0], parts[1], parts[2])
    }

    private mutating func parseArguments() throws -> ([TemplateExpr], [(String, TemplateExpr)]) {
        var args: [TemplateExpr] = []
        var kwargs: [(String, TemplateExpr)] = []
        while !isOp(")") {
            if case .name(let n) = current, case .op("=") = next {
                _ = advance()
                _ = advance()
                kwargs.append((n, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            if isOp(",") { _ = advance() } else { break }
        }
        try expectOp(")")
        return (args, kwargs)
    }

    private mutating func parseFilterExpr(_ node: TemplateExpr) throws -> TemplateExpr {
        var node = node
        var chained = 0
        defer { depth -= chained }
        while true {
            if isOp("|") || isName("is") {
                try enter()
                chained += 1
            }
            if isOp("|") {
                _ = advance()
                let name = try expectName()
                guard Self.filters.contains(name) else { throw error("unsupported filter \"\(name)\"") }
                var args: [TemplateExpr] = []
                var kwargs: [(String, TemplateExpr)] = []
                if isOp("(") {
                    _ = advance()
                    (args, kwargs) = try parseArguments()
                }
                node = .filter(node, name, args, kwargs)
                node = try parsePostfix(node)
            } else if isName("is") {
                _ = advance()
                var negated = false
                if isName("not") {
                    _ = advance()
                    negated = true
                }
                let name: String
                switch advance() {
                case .name(let n): name = n
                case .op(let o) where o == "==" || o == "!=": name = o
                default: throw error("expected a test name after 'is'")
                }
                guard Self.tests.contains(name) else { throw error("unsupported test \"\(name)\"") }
                var args: [TemplateExpr] = []
                if isOp("(") {
                    _ = advance()
                    (args, _) = try parseArguments()
                } else if case .name(let n) = current, !["and", "or", "else", "if", "in", "is", "not"].contains(n) {
                    args = [try parsePrimary()]
                } else if case .string = current {
                    args = [try parsePrimary()]
                } else if case .int = current {
                    args = [try parsePrimary()]
                }
                node = .test(node, name, args, negated: negated)
            } else {
                return node
            }
        }
    }
}
