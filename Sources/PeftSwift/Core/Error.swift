import CPeftSwift

/// The error every throwing peftswift API raises. `status` is the C status code
/// (`PST_ERR_*` in peftswift.h) the C layer returns for it; `message` names the argument and
/// the value that caused it, without the function name (the C layer prefixes that).
public struct PSTError: Error, Equatable, CustomStringConvertible {
    public let status: Int32
    public let message: String

    public init(status: Int32, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(PSTError.name(of: status)): \(message)" }

    /// `PST_ERR_INVALID_ARG`: a pointer, size, enum value or option is invalid.
    public static func invalidArgument(_ m: String) -> PSTError { PSTError(status: PST_ERR_INVALID_ARG, m) }
    /// `PST_ERR_OUT_OF_MEMORY`: an allocation failed or a request exceeds a budget.
    public static func outOfMemory(_ m: String) -> PSTError { PSTError(status: PST_ERR_OUT_OF_MEMORY, m) }
    /// `PST_ERR_SHAPE`: shapes or lengths disagree.
    public static func shape(_ m: String) -> PSTError { PSTError(status: PST_ERR_SHAPE, m) }
    /// `PST_ERR_UNSUPPORTED`.
    public static func unsupported(_ m: String) -> PSTError { PSTError(status: PST_ERR_UNSUPPORTED, m) }
    /// `PST_ERR_MISUSE`: calls in the wrong order, use after free, double release.
    public static func misuse(_ m: String) -> PSTError { PSTError(status: PST_ERR_MISUSE, m) }
    /// `PST_ERR_IO`: a file or OS call failed.
    public static func io(_ m: String) -> PSTError { PSTError(status: PST_ERR_IO, m) }
    /// `PST_ERR_CORRUPT`: data fails its checks.
    public static func corrupt(_ m: String) -> PSTError { PSTError(status: PST_ERR_CORRUPT, m) }
    /// `PST_ERR_NOT_FOUND`: a named item does not exist.
    public static func notFound(_ m: String) -> PSTError { PSTError(status: PST_ERR_NOT_FOUND, m) }
    /// `PST_ERR_EXISTS`: a named item already exists.
    public static func exists(_ m: String) -> PSTError { PSTError(status: PST_ERR_EXISTS, m) }
    /// `PST_ERR_NONFINITE`: NaN or ±Inf where finite values are required.
    public static func nonFinite(_ m: String) -> PSTError { PSTError(status: PST_ERR_NONFINITE, m) }
    /// `PST_ERR_INTERNAL`: a bug in peftswift.
    public static func internalError(_ m: String) -> PSTError { PSTError(status: PST_ERR_INTERNAL, m) }

    /// The description of a status code (what `pst_status_string` returns; the table is the
    /// C one in Sources/CPeftSwift/shim.c, which also answers on a CPU the engine cannot run on).
    public static func name(of status: Int32) -> String {
        String(cString: pstshim_status_string(status))
    }
}

/// Per-thread last error of the C API (see `pst_last_error`).
enum LastError {
    static func set(_ message: String) {
        var m = message
        m.withUTF8 { buf in
            buf.withMemoryRebound(to: CChar.self) { pstshim_set_error($0.baseAddress!, $0.count) }
        }
    }
    static func clear() { pstshim_clear_error() }
    static var current: UnsafePointer<CChar> { pstshim_last_error() }
}

/// Runs `body` for the C function `function`: clears the last error, returns `PST_OK`, or
/// stores "function: message" as the last error and returns the error's status. Every `@c`
/// entry point that can fail goes through here, so no Swift error escapes into C.
@inline(__always)
func cEntry(_ function: StaticString, _ body: () throws(PSTError) -> Void) -> Int32 {
    LastError.clear()
    do {
        try body()
        return PST_OK
    } catch {
        LastError.set("\(function): \(error.message)")
        return error.status
    }
}

/// A C pointer argument that must not be NULL.
@inline(__always)
func required<T>(_ p: T?, _ name: StaticString) throws(PSTError) -> T {
    guard let p else { throw .invalidArgument("\(name) is NULL") }
    return p
}
