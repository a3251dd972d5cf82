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

        .target(name: "TensorMath", dependencies: ["COpenBLAS"], swiftSettings: optimisedMath),
        .target(name: "ModelFormats", dependencies: ["TensorMath", "CLZ4"], swiftSettings: optimisedMath),
        .target(name: "Tokenization"),
        .target(name: "MoEModels", dependencies: ["TensorMath", "ModelFormats"], swiftSettings: optimisedMath),
        .target(name: "ExpertPrediction", dependencies: ["MoEModels", "ModelFormats", "TensorMath"], swiftSettings: optimisedMath),
        .target(name: "InferenceEngine", dependencies: ["MoEModels", "TensorMath"], swiftSettings: optimisedMath),
        .target(name: "ExpertCache", dependencies: ["ModelFormats", "TensorMath"]),
        .target(
            name: "HTTPServer",
            dependencies: [
                "CLibUV", "CHTTPParser", "InferenceEngine",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        .executableTarget(
            name: "MoEServeCLI",
            dependencies: [
                "MoEModels", "ModelFormats", "Tokenization", "TensorMath", "InferenceEngine", "ExpertPrediction", "ExpertCache",
                "HTTPServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: optimisedMath
        ),

        .testTarget(
            name: "InferenceEngineTests", dependencies: ["InferenceEngine", "MoEModels", "ModelFormats"],
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
        .testTarget(name: "TokenizationTests", dependencies: ["Tokenization"]),
        .testTarget(name: "ExpertCacheTests", dependencies: ["ExpertCache", "MoEModels", "ModelFormats", "TensorMath"]),
        .testTarget(
            name: "ExpertStoreTests", dependencies: ["ModelFormats", "MoEModels", "TensorMath"],
            swiftSettings: optimisedMath
        ),
        .testTarget(name: "HTTPServerTests", dependencies: ["HTTPServer", "InferenceEngine"]),
        .testTarget(
            name: "MoEModelsTests", dependencies: ["MoEModels", "ModelFormats", "TensorMath"],
            swiftSettings: optimisedMath
        ),
    ]
)
