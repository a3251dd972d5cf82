import Foundation

/// Thin typed accessors over `JSONSerialization` output, used while loading `tokenizer.json`.
struct JSONObject {
    let dict: [String: Any]
    let file: String
    let path: String

    init(_ any: Any?, file: String, path: String) throws {
        guard let d = any as? [String: Any] else {
            throw TokenizerError(file: file, "expected a JSON object at \(path)")
        }
        self.dict = d
        self.file = file
        self.path = path
    }

    func has(_ key: String) -> Bool {
        guard let v = dict[key] else { return false }
        return !(v is NSNull)
    }

    func raw(_ key: String) -> Any? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        return v
    }

    func string(_ key: String) throws -> String {
        guard let s = dict[key] as? String else {
            throw TokenizerError(file: file, "expected a string at \(path).\(key)")
        }
        return s
    }

    func optionalString(_ key: String) -> String? { dict[key] as? String }

    func int(_ key: String) throws -> Int {
        if let n = dict[key] as? NSNumber { return n.intValue }
        if let i = dict[key] as? Int { return i }
        throw TokenizerError(file: file, "expected an integer at \(path).\(key)")
    }

    func optionalInt(_ key: String) -> Int? {
        if let n = dict[key] as? NSNumber { return n.intValue }
        return dict[key] as? Int
    }

    func bool(_ key: String, default def: Bool) -> Bool {
        guard let v = dict[key], !(v is NSNull) else { return def }
        if let b = v as? Bool { return b }
        if let n = v as? NSNumber { return n.boolValue }
        return def
    }

    func object(_ key: String) throws -> JSONObject {
        try JSONObject(dict[key], file: file, path: "\(path).\(key)")
    }

    func optionalObject(_ key: String) throws -> JSONObject? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        return try JSONObject(v, file: file, path: "\(path).\(key)")
    }

    func array(_ key: String) throws -> [Any] {
        guard let a = dict[key] as? [Any] else {
            throw TokenizerError(file: file, "expected an array at \(path).\(key)")
        }
        return a
    }

    func type() throws -> String { try string("type") }

    func unsupported(_ what: String) -> TokenizerError {
        TokenizerError(file: file, "unsupported \(what) at \(path)")
    }
}
