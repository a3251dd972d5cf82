import JSONCoding

/// Typed accessors over a parsed JSON object, with errors that name the file and the JSON path.
struct JSONObject {
    /// The object itself (`.object`), so lookups use `JSON`'s subscript (last value of a repeated key).
    let dict: JSON
    let file: String
    let path: String

    init(_ value: JSON?, file: String, path: String) throws {
        guard let d = value, case .object = d else {
            throw TokenizerError(file: file, "expected a JSON object at \(path)")
        }
        self.dict = d
        self.file = file
        self.path = path
    }

    func has(_ key: String) -> Bool {
        guard let v = dict[key] else { return false }
        return !v.isNull
    }

    func raw(_ key: String) -> JSON? {
        guard let v = dict[key], !v.isNull else { return nil }
        return v
    }

    func string(_ key: String) throws -> String {
        guard let s = dict[key]?.stringValue else {
            throw TokenizerError(file: file, "expected a string at \(path).\(key)")
        }
        return s
    }

    func optionalString(_ key: String) -> String? { dict[key]?.stringValue }

    func int(_ key: String) throws -> Int {
        guard let i = dict[key]?.intValue else {
            throw TokenizerError(file: file, "expected an integer at \(path).\(key)")
        }
        return i
    }

    func optionalInt(_ key: String) -> Int? { dict[key]?.intValue }

    func bool(_ key: String, default def: Bool) -> Bool { dict[key]?.boolValue ?? def }

    func object(_ key: String) throws -> JSONObject {
        try JSONObject(dict[key], file: file, path: "\(path).\(key)")
    }

    func optionalObject(_ key: String) throws -> JSONObject? {
        guard let v = dict[key], !v.isNull else { return nil }
        return try JSONObject(v, file: file, path: "\(path).\(key)")
    }

    func array(_ key: String) throws -> [JSON] {
        guard let a = dict[key]?.arrayValue else {
            throw TokenizerError(file: file, "expected an array at \(path).\(key)")
        }
        return a
    }

    func type() throws -> String { try string("type") }

    func unsupported(_ what: String) -> TokenizerError {
        TokenizerError(file: file, "unsupported \(what) at \(path)")
    }
}
