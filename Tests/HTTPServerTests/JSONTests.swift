import Testing
@testable import HTTPServer

@Suite struct JSONTests {
    @Test func roundTrip() throws {
        let text = #"{"a":1,"b":[true,false,null],"c":"x\"\n\u00e9\ud83d\ude00","d":-2.5e3}"#
        let json = try JSON.parse(text)
        #expect(json["a"] == .int(1))
        #expect(json["c"] == .string("x\"\né😀"))
        #expect(json["d"] == .double(-2500))
        #expect(try JSON.parse(json.serialized()) == json)
    }

    @Test func rejectsGarbage() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01x", "\"\\x\"", "nul", "{}{}", String(repeating: "[", count: 500)] {
            #expect(throws: JSONParseError.self) { try JSON.parse(bad) }
        }
    }

    @Test func escapesControlCharacters() {
        #expect(JSON.string("a\u{1}b").serialized() == "\"a\\u0001b\"")
    }
}
