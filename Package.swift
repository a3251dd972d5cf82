// swift-tools-version:6.0
import Foundation
import PackageDescription

/// Hand-written SIMD kernels need a real CPU target, otherwise the Swift compiler lowers
/// `SIMD16<Float>` to SSE2 and the kernels run 10-50x slower. Haswell (AVX2 + FMA + F16C) is
/// the baseline every machine of this project's kind has; the kernels are generic Swift SIMD,
/// so building for a CPU with AVX-512 (`MOE_TARGET_CPU=skylake-avx512 swift build ...`, or
/// `znver4`, `sapphirerapids`) lowers the same code to 512-bit vectors. Chosen at build time.
let targetCPU = ProcessInfo.processInfo.environment["MOE_TARGET_CPU"] ?? "haswell"
let optimisedMath: [SwiftSetting] = [
    .unsafeFlags(["-Xcc", "-march=\(targetCPU)", "-target-cpu", targetCPU, "-Ounchecked"], .when(configuration: .release)),
    .unsafeFlags(["-Xcc", "-march=\(targetCPU)", "-target-cpu", targetCPU], .when(configuration: .debug)),
]

let package = Package(
    name: "MoEServe",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "moe-serve", targets: ["MoEServeCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // C shims: a module map and a header each, nothing else.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CHTTPParser", providers: [.apt(["libhttp-parser-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // io_uring for the expert reader (ModelFormats' UringFileReader); the thread-pool reader is the fallback.
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),

        // Integer-dot kernels in C with intrinsics: each function carries its own target
        // attribute and is chosen at run time from CPUID, so this target needs no -march.
        .target(name: "CKernels"),
        .target(name: "TensorMath", dependencies: ["COpenBLAS", "CKernels"], swiftSettings: optimisedMath),
        .target(name: "ModelFormats", dependencies: ["TensorMath", "CKernels", "CLZ4", "CURing", "JSONCoding"], swiftSettings: optimisedMath),
        // One JSON parser, serializer and string escaper for every module (no dependencies).
        .target(name: "JSONCoding"),
        // The Jinja interpreter that renders chat templates.
        .target(name: "ChatTemplates", dependencies: ["JSONCoding"]),
        .target(name: "Tokenization", dependencies: ["ChatTemplates", "JSONCoding"]),
        // Constrained decoding: GBNF grammars, JSON schema → grammar, the vocabulary trie for token masks.
        .target(name: "Grammar", dependencies: ["JSONCoding"]),
        .target(name: "MoEModels", dependencies: ["TensorMath", "ModelFormats"], swiftSettings: optimisedMath),
        .target(name: "ExpertPrediction", dependencies: ["MoEModels", "ModelFormats", "TensorMath"], swiftSettings: optimisedMath),
        .target(name: "InferenceEngine", dependencies: ["MoEModels", "TensorMath"], swiftSettings: optimisedMath),
        .target(name: "ExpertCache", dependencies: ["ModelFormats", "TensorMath"]),
        // The composition root: model, memory plan, expert cache, predictor, engine and live
        // statistics from a typed `RuntimeSpecification`.
        .target(
            name: "Runtime",
            dependencies: ["InferenceEngine", "ExpertCache", "ExpertPrediction", "MoEModels", "ModelFormats", "Tokenization", "TensorMath"]
        ),
        // Benchmark and trace tooling (`bench io|kernels|trace|decode|batch|predictor`): a library,
        // so that tests run the tools without the executable, which only parses their arguments.
        .target(
            name: "ModelTools",
            dependencies: ["Runtime", "InferenceEngine", "ExpertCache", "ExpertPrediction", "MoEModels", "ModelFormats", "TensorMath"],
            swiftSettings: optimisedMath
        ),
        .target(
            name: "HTTPServer",
            dependencies: [
                "CLibUV", "CHTTPParser", "InferenceEngine", "JSONCoding", "Grammar",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        // sd_notify over $NOTIFY_SOCKET without libsystemd (Deploy/systemd runs serve as Type=notify).
        .target(name: "ServiceNotify"),
        .executableTarget(
            name: "MoEServeCLI",
            dependencies: [
                "MoEModels", "ModelFormats", "Tokenization", "TensorMath", "InferenceEngine", "ExpertPrediction", "ExpertCache",
                "HTTPServer", "Runtime", "JSONCoding",
                "ServiceNotify", "ModelTools",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: optimisedMath
        ),

        .testTarget(
            name: "InferenceEngineTests", dependencies: ["InferenceEngine", "MoEModels", "ModelFormats", "TensorMath"],
            swiftSettings: optimisedMath
        ),
        .testTarget(
            name: "ExpertPredictionTests", dependencies: ["ExpertPrediction", "MoEModels", "ModelFormats"],
            swiftSettings: optimisedMath
        ),
        // Runs the built moe-serve binary (scripts/test.sh builds it before the tests).
        .testTarget(name: "EndToEndTests"),
        .testTarget(name: "TensorMathTests", dependencies: ["TensorMath"], swiftSettings: optimisedMath),
        .testTarget(name: "ModelFormatsTests", dependencies: ["ModelFormats"]),
        .testTarget(name: "TokenizationTests", dependencies: ["Tokenization", "JSONCoding"]),
        .testTarget(name: "ChatTemplatesTests", dependencies: ["ChatTemplates", "JSONCoding"]),
        .testTarget(name: "JSONCodingTests", dependencies: ["JSONCoding"]),
        .testTarget(name: "GrammarTests", dependencies: ["Grammar", "JSONCoding", "Tokenization"]),
        .testTarget(name: "ExpertCacheTests", dependencies: ["ExpertCache", "MoEModels", "ModelFormats", "TensorMath"]),
        .testTarget(
            name: "ExpertStoreTests", dependencies: ["ModelFormats", "MoEModels", "TensorMath", "CKernels"],
            swiftSettings: optimisedMath
        ),
        .testTarget(name: "HTTPServerTests", dependencies: ["HTTPServer", "InferenceEngine", "TensorMath"]),
        // Deploy/: sd_notify on a real socket, the unit, image, manifests and nginx config through their
        // validators, and the nginx failover test over replicas of the built binary.
        .testTarget(name: "DeployTests", dependencies: ["ServiceNotify"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "InferenceEngine", "ExpertCache", "MoEModels", "ModelFormats", "TensorMath", "JSONCoding"]),
        .testTarget(
            name: "ModelToolsTests", dependencies: ["ModelTools", "ExpertCache", "ModelFormats", "Runtime"],
            swiftSettings: optimisedMath
        ),
        .testTarget(
            name: "MoEModelsTests", dependencies: ["MoEModels", "ModelFormats", "TensorMath", "InferenceEngine"],
            swiftSettings: optimisedMath
        ),
    ]
)

// libFuzzer targets (Tests/Fuzz), only with MOE_FUZZ=1 so that `swift build` and `swift test`
// never see them: they only link with `-sanitize=fuzzer` (libFuzzer's driver). scripts/fuzz.sh
// builds and runs them.
if ProcessInfo.processInfo.environment["MOE_FUZZ"] == "1" {
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("FuzzHTTP", ["HTTPServer", "InferenceEngine"]),
        ("FuzzTokenizer", ["Tokenization"]),
        ("FuzzChatTemplate", ["Tokenization"]),
        ("FuzzModelFormats", ["ModelFormats"]),
    ]
    package.targets.append(.target(name: "FuzzSupport", path: "Tests/Fuzz/Targets/FuzzSupport"))
    for target in fuzzTargets {
        package.targets.append(.executableTarget(
            name: target.name, dependencies: target.dependencies + ["FuzzSupport"], path: "Tests/Fuzz/Targets/\(target.name)",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ))
        package.products.append(.executable(name: target.name, targets: [target.name]))
    }
}
