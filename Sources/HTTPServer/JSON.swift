/// `JSON` appears in this module's public API (`HTTPResponse.json`, `APIError.json`,
/// `StatsProvider.json`), so whoever imports HTTPServer sees the one shared JSON type.
@_exported import JSONCoding
