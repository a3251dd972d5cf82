// libFuzzer target: the header parsers of the model files a user points the server at. Byte 0
// selects the parser (3: GGUF, otherwise mod 3), the rest is the file's content:
//   0: a safetensors file (8-byte little-endian header length, JSON header, data),
//   1: an expert store's manifest.json,
//   2: a Hugging Face config.json,
//   3: a GGUF file (header, metadata, tensor infos, data).
// Each must accept the input or throw a one-line error; nothing may trap.
// Built only with MOE_FUZZ=1 (see scripts/fuzz.sh).
import Foundation
import FuzzSupport
@testable import ModelFormats

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzModelFormats(_ input: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = input else { return 0 }
    guard size > 0 else { return 0 }
    let content = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    if data[0] == 3 {
        let file = UnsafeMutableRawBufferPointer.allocate(byteCount: max(content.count, 1), alignment: 8)
        defer { file.deallocate() }
        file.copyMemory(from: content)
        if let header = try? GGUFFile.parse(UnsafeRawBufferPointer(rebasing: file[0..<content.count]), path: "fuzz.gguf") {
            for tensor in header.tensors where tensor.byteCount > 0 {
                // Every accepted tensor lies inside the file: touch its first and last byte.
                _ = file[tensor.fileOffset]
                _ = file[tensor.fileOffset + tensor.byteCount - 1]
            }
        }
        return 0
    }
    switch data[0] % 3 {
    case 0:
        guard content.count >= 8 else { return 0 } // SafetensorsFile.init refuses these before parsing
        // A copy, so that a read past the end is caught by AddressSanitizer.
        let file = UnsafeMutableRawBufferPointer.allocate(byteCount: content.count, alignment: 8)
        defer { file.deallocate() }
        file.copyMemory(from: content)
        if let entries = try? SafetensorsFile.parseHeader(base: UnsafeRawPointer(file.baseAddress!), size: file.count, path: "fuzz.safetensors") {
            for entry in entries.values {
                // Every accepted tensor lies inside the file: touch its first and last byte.
                guard entry.byteCount > 0 else { continue }
                _ = file[entry.fileOffset]
                _ = file[entry.fileOffset + entry.byteCount - 1]
            }
        }
    case 1:
        _ = try? ExpertStoreManifest.parse(Data(content), path: "manifest.json")
    default:
        _ = try? ModelConfig.parse(Data(content), file: "config.json")
    }
    return 0
}

/// The process entry point (see FuzzSupport/FuzzDriver.swift).
@_cdecl("FuzzModelFormats_main")
public func fuzzModelFormatsMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc: argc, argv: argv) { fuzzModelFormats($0, $1) }
}
