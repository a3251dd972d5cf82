/// Typed access to the fields of a JSON request body. Every failure is a 400 that names the
/// field and what was expected, so a client sees exactly what to fix.
struct RequestFields {
    let object: JSON
    /// Prefix for nested objects (`stream_options.include_usage`).
    let path: String

    /// Parses `body` as a JSON object.
    init(body: [UInt8]) throws {
        let trimmed = body.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        guard !trimmed.isEmpty else { throw APIError.invalidRequest("request body is empty; expected a JSON object") }
        let value: JSON
        do { value = try JSON.parse(body) } catch let error as JSONParseError {
            throw APIError.invalidRequest("request body is not valid JSON: \(error.description)")
        }
        guard case .object = value else { throw APIError.invalidRequest("request body must be a JSON object") }
        self.object = value
        self.path = ""
    }

    init(object: JSON, path: String) {
        self.object = object
        self.path = path
    }

    func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The raw value, with `null` treated as absent (OpenAI clients send explicit nulls).
    func value(_ key: String) -> JSON? {
        guard let v = object[key], !v.isNull else { return nil }
        return v
    }

    func wrongType(_ key: String, _ expected: String) -> APIError {
        .invalidRequest("field '\(name(key))' must be \(expected)")
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.stringValue else { throw wrongType(key, "a string") }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.boolValue else { throw wrongType(key, "a boolean") }
        return b
    }

    func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let v = value(key) else { return nil }
        guard let i = v.intValue else { throw wrongType(key, "an integer") }
        if let range, !range.contains(i) {
            throw APIError.invalidRequest("field '\(name(key))' must be between \(range.lowerBound) and \(range.upperBound), got \(i)")
        }
        return i
    }

    func double(_ key: String, in range: ClosedRange<Double>? = nil) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard let d = v.doubleValue else { throw wrongType(key, "a number") }
        if let range, !range.contains(d) {
            throw APIError.invalidRequest("field '\(name(key))' must be between \(range.lowerBound) and \(range.upperBound), got \(d)")
        }
        return d
    }

    /// A string or an array of strings (`stop`).
    func strings(_ key: String) throws -> [String]? {
        guard let v = value(key) else { return nil }
        if let s = v.stringValue { return [s] }
        guard let items = v.arrayValue else { throw wrongType(key, "a string or an array of strings") }
        return try items.map {
            guard let s = $0.stringValue else { throw wrongType(key, "a string or an array of strings") }
            return s
        }
    }

    /// Refuses fields outside `allowed`: a field the server would not honour is a 400 naming it,
    /// never silently ignored. Explicit nulls count as absent (OpenAI clients send them).
    func rejectUnknown(_ allowed: Set<String>, route: String? = nil) throws {
        guard case let .object(members) = object else { return }
        for (key, value) in members where !allowed.contains(key) && !value.isNull {
            let place = route.map { " by \($0)" } ?? ""
            throw APIError.invalidRequest("field '\(name(key))' is not supported\(place); remove it (the server does not ignore fields it cannot honour)")
        }
    }

    /// A nested object.
    func object(_ key: String) throws -> RequestFields? {
        guard let v = value(key) else { return nil }
        guard case .object = v else { throw wrongType(key, "an object") }
        return RequestFields(object: v, path: name(key))
    }
}
