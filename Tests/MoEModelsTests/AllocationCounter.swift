import Foundation

/// Counts, per thread, the calls a process makes to the C allocator (`malloc`, `calloc`,
/// `realloc`, `memalign`, `posix_memalign`, `aligned_alloc`: every Swift object, array and
/// dictionary, and every `AlignedBuffer`) and to `mmap`, by running it with a small library in
/// `LD_PRELOAD` that counts and then calls glibc's own functions. A preloaded library is the one
/// robust way to see every allocation without linking an allocator into the test bundle (which
/// would fight the sanitizer builds) or switching on the Swift runtime's Instruments hooks (which
/// change how every thread retains). Built from the C below with the system C compiler on first use.
enum AllocationCounter {
    /// The C source of the preloaded library. Thread-local counters use the initial-exec TLS
    /// model, which never allocates (a dynamic TLS block would call `malloc` from `malloc`).
    static let source = #"""
    #define _GNU_SOURCE
    #include <errno.h>
    #include <stddef.h>
    #include <sys/syscall.h>
    #include <sys/types.h>
    #include <unistd.h>

    extern void *__libc_malloc(size_t);
    extern void *__libc_calloc(size_t, size_t);
    extern void *__libc_realloc(void *, size_t);
    extern void *__libc_memalign(size_t, size_t);

    static __thread long allocations __attribute__((tls_model("initial-exec")));
    static __thread long mappings __attribute__((tls_model("initial-exec")));

    void *malloc(size_t n) { allocations++; return __libc_malloc(n); }
    void *calloc(size_t n, size_t size) { allocations++; return __libc_calloc(n, size); }
    void *realloc(void *p, size_t n) { allocations++; return __libc_realloc(p, n); }
    void *memalign(size_t alignment, size_t n) { allocations++; return __libc_memalign(alignment, n); }
    void *aligned_alloc(size_t alignment, size_t n) { allocations++; return __libc_memalign(alignment, n); }
    int posix_memalign(void **out, size_t alignment, size_t n) {
        allocations++;
        void *p = __libc_memalign(alignment, n);
        if (!p) return ENOMEM;
        *out = p;
        return 0;
    }
    void *mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
        mappings++;
        return (void *)syscall(SYS_mmap, address, length, protection, flags, fd, offset);
    }
    void *mmap64(void *address, size_t length, int protection, int flags, int fd, off_t offset)
        __attribute__((alias("mmap")));

    /// The calling thread's counts so far.
    void moe_allocation_counts(long *allocationCount, long *mappingCount) {
        *allocationCount = allocations;
        *mappingCount = mappings;
    }
    """#

    /// The built library, or nil (with the reason) when no C compiler is available.
    static let library: Result<URL, Error> = Result {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moe-allocation-counter-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let sourceFile = directory.appendingPathComponent("counter.c"), library = directory.appendingPathComponent("libcounter.so")
        try source.write(to: sourceFile, atomically: true, encoding: .utf8)
        var failures: [String] = []
        // The system C compiler, else the Swift toolchain's clang.
        for name in ["cc", "clang"] {
            let compiler = Process()
            compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            compiler.arguments = [name, "-shared", "-fPIC", "-O2", "-o", library.path, sourceFile.path]
            let errors = Pipe()
            compiler.standardError = errors
            try compiler.run()
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            compiler.waitUntilExit()
            if compiler.terminationStatus == 0 { return library }
            failures.append("\(name): \(message)")
        }
        throw CounterError("cannot build the counting library: \(failures.joined(separator: "; "))")
    }

    struct CounterError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// The calling thread's (allocations, mappings), when this process runs with the library preloaded.
    static func counts() -> (allocations: Int, mappings: Int)? {
        guard let read = reader else { return nil }
        var allocations = 0, mappings = 0
        read(&allocations, &mappings)
        return (allocations, mappings)
    }

    /// The library's `moe_allocation_counts`, looked up once (a lookup between two counts
    /// could itself allocate).
    private static let reader: (@convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Void)? = {
        guard let symbol = dlsym(nil, "moe_allocation_counts") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Void).self)
    }()
}
