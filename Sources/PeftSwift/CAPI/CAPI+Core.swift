import CPeftSwift

// The core of the C API: versions, status strings, the per-thread last error, threads.
// Every @c function in Sources/PeftSwift/CAPI is declared in include/peftswift.h, which
// scripts/gen_header.py generates from the compiler's PeftSwift-Swift.h, taking each
// function's documentation from the `///` comment above it.

/// Returns the library's version, "MAJOR.MINOR.PATCH" (a static string; never free it).
/// Compare with PST_VERSION_STRING to check the header and the library agree.
@c(pstimpl_version_string)
public func pst_version_string() -> UnsafePointer<CChar> {
    UnsafeRawPointer(Version.string.utf8Start).assumingMemoryBound(to: CChar.self)
}

/// Returns the library's ABI version. A program built against this header should check
/// `pst_abi_version() == PST_ABI_VERSION` before any other call.
@c(pstimpl_abi_version)
public func pst_abi_version() -> Int32 { Version.abi }

/// Returns a static, human-readable name for a status code ("ok", "invalid argument", ...);
/// unknown codes give "unknown status". Never NULL; never free it.
@c(pstimpl_status_string)
public func pst_status_string(_ status: pst_status) -> UnsafePointer<CChar> {
    pstshim_status_string(status)
}

/// Returns the message of the last failed pst_ call on the calling thread ("" after a
/// success). It names the function, the argument and the value. The pointer stays valid
/// until this thread's next pst_ call; copy it to keep it. Never NULL; never free it.
@c(pstimpl_last_error)
public func pst_last_error() -> UnsafePointer<CChar> { LastError.current }

/// Sets how many threads the kernels use (1 ... 1024; the default is the number of online
/// CPUs). Applies process-wide from the next call on.
/// Errors: PST_ERR_INVALID_ARG when n is outside 1 ... 1024.
@c(pstimpl_set_num_threads)
public func pst_set_num_threads(_ n: Int32) -> pst_status {
    cEntry("pst_set_num_threads") { () throws(PSTError) in
        guard n >= 1 && n <= 1024 else { throw .invalidArgument("n (\(n)) must be in 1...1024") }
        Threads.count = Int(n)
    }
}

/// Returns the number of threads the kernels use.
@c(pstimpl_get_num_threads)
public func pst_get_num_threads() -> Int32 { Int32(Threads.count) }

/// Returns PST_OK when this CPU runs the library, else PST_ERR_UNSUPPORTED_CPU with a last
/// error naming the missing instruction-set features. The library is built for x86-64-v3
/// (AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE; Intel Haswell / AMD Excavator or newer).
/// On a CPU without them every pst_ function answers without running engine code: functions
/// returning pst_status return PST_ERR_UNSUPPORTED_CPU, pst_*_free do nothing,
/// pst_4bit_packed_bytes and pst_blockwise_count return -1, pst_get_num_threads returns 0,
/// pst_get_isa and pst_host_isa return -1;
/// pst_abi_version, pst_version_string, pst_status_string and pst_last_error work as usual.
/// Call it first to report the problem early (the Python module's import does).
@c(pstimpl_cpu_check)
public func pst_cpu_check() -> pst_status {
    // Reached only through the exported pst_cpu_check, which has checked the CPU already.
    cEntry("pst_cpu_check") { () throws(PSTError) in }
}

// MARK: - Kernel paths

/// Uses the kernel path isa (PST_ISA_AVX2, PST_ISA_AVX512 or PST_ISA_AVX512_BF16) from the next
/// call on, process-wide; at load the library takes the best path the CPU has, capped by the
/// environment variable PST_ISA. fp32 results are bit-identical on every path; bf16 compute
/// needs PST_ISA_AVX512_BF16 (models and layers already set to bf16 keep using it while the CPU
/// has it). Errors: PST_ERR_INVALID_ARG (not a PST_ISA_* value), PST_ERR_UNSUPPORTED_CPU (the CPU
/// lacks it; the message names the missing features).
@c(pstimpl_set_isa)
public func pst_set_isa(_ isa: Int32) -> pst_status {
    cEntry("pst_set_isa") { () throws(PSTError) in
        guard let i = ISA(rawValue: isa) else {
            throw .invalidArgument("isa (\(isa)) is not PST_ISA_AVX2, PST_ISA_AVX512 or PST_ISA_AVX512_BF16")
        }
        try ISA.set(i)
    }
}

/// Returns the kernel path in use (a PST_ISA_* value).
@c(pstimpl_get_isa)
public func pst_get_isa() -> Int32 { ISA.active.rawValue }

/// Returns the best kernel path this CPU has (a PST_ISA_* value), whatever PST_ISA says.
@c(pstimpl_host_isa)
public func pst_host_isa() -> Int32 { ISA.host.rawValue }
