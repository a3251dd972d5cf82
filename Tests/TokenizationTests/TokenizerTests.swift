import Testing
@testable import Tokenization

@Suite struct TokenizerPlaceholderTests {
    @Test func moduleLinks() { _ = TokenizationModule.self }
}
