import Testing
@testable import InferenceEngine

/// The one size parser: binary units everywhere, clear errors for what is not a size.
struct ByteSizeTests {
    @Test func everyUnitSpellingIsBinary() throws {
        let cases: [(String, Int)] = [
            ("4G", 4 << 30), ("4GB", 4 << 30), ("4GiB", 4 << 30), ("4gib", 4 << 30), ("4 GiB", 4 << 30),
            ("512M", 512 << 20), ("512MB", 512 << 20), ("512MiB", 512 << 20),
            ("16K", 16 << 10), ("16KB", 16 << 10), ("16KiB", 16 << 10),
            ("2T", 2 << 40), ("2TiB", 2 << 40), ("1048576", 1 << 20), ("0", 0), ("7B", 7),
            ("1.5GiB", 3 << 29), (" 2MiB ", 2 << 20),
        ]
        for (text, bytes) in cases {
            #expect(try ByteSize.parse(text) == bytes, "\(text)")
        }
    }

    @Test func overflowNegativeAndGarbageFailWithTheReason() {
        func reason(_ text: String) -> String? {
            do { _ = try ByteSize.parse(text); return nil } catch let error as ByteSizeError { return error.description } catch { return "\(error)" }
        }
        #expect(reason("-1")?.contains("negative") == true)
        #expect(reason("-4GiB")?.contains("negative") == true)
        #expect(reason("9999999999T")?.contains("too large") == true)
        #expect(reason("9223372036854775807K")?.contains("too large") == true)
        #expect(reason("99999999999999999999")?.contains("too large") == true)
        #expect(reason("4XB")?.contains("unknown unit") == true)
        #expect(reason("lots")?.contains("expected a number") == true)
        #expect(reason("")?.contains("expected a number") == true)
        #expect(reason("1.2.3G") != nil)
        #expect(reason("GiB") != nil)
        #expect(reason("4GiB")  == nil)
        #expect(reason("lots")?.contains("'lots'") == true)
    }
}
