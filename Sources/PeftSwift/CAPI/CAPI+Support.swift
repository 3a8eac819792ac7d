import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// What every file of the C layer shares: every pointer, size, string and struct coming from C
// is checked here before the Swift engine sees it, so no precondition or out-of-range index is
// reachable from C. (cEntry and required, which every function uses, are in Core/Error.swift.)
//
//   sizes          requireCapacity, requireCount, readShape
//   handles        makeHandle, object, releaseHandle
//   strings in     cString (≤ 4096 bytes), cStringOrNil, cText (any length), lengthText, utf8Text
//   strings out    OwnedCString (owned by a handle), copyOutString (into a caller's buffer)
//   LLM / trainer  copyOutIDs, targetModuleList (shared by the pst_llm_* and pst_trainer_* files)
//   structs        GrowableStruct + readStruct / structOutput / readStructElement (struct_size)

// MARK: - Sizes

/// An output buffer of `have` elements must hold `need`.
@inline(__always)
func requireCapacity(_ name: StaticString, have: Int, need: Int, unit: StaticString = "bytes") throws(PSTError) {
    guard have >= need else {
        throw .invalidArgument("\(name) capacity (\(have) \(unit)) is smaller than the \(need) \(unit) needed")
    }
}

/// An output buffer whose capacity comes from C as an int64_t (the header's rule for counts).
@inline(__always)
func requireCapacity(_ name: StaticString, have: Int64, need: Int, unit: StaticString = "bytes") throws(PSTError) {
    try requireCapacity(name, have: Int(have), need: need, unit: unit)
}

/// A count coming from C (int64_t) that must be ≥ `minimum`.
@inline(__always)
func requireCount(_ name: StaticString, _ v: Int64, minimum: Int64 = 1) throws(PSTError) -> Int {
    guard v >= minimum else { throw .invalidArgument("\(name) (\(v)) must be >= \(minimum)") }
    guard v <= Int64(Int.max / 8) else { throw .invalidArgument("\(name) (\(v)) is too large (max \(Int.max / 8))") }
    return Int(v)
}

/// Reads a C shape array (`ndim` int64 values, each ≥ 1) and returns it with its product.
func readShape(_ shape: UnsafePointer<Int64>?, _ ndim: Int32, _ name: StaticString = "shape") throws(PSTError) -> [Int] {
    guard ndim >= 1 && ndim <= PST_MAX_DIMS else {
        throw .invalidArgument("ndim (\(ndim)) must be in 1...\(PST_MAX_DIMS)")
    }
    let s = try required(shape, name)
    var dims: [Int] = []
    var n = 1
    for i in 0..<Int(ndim) {
        let d = s[i]
        guard d >= 1 else { throw .invalidArgument("\(name)[\(i)] (\(d)) must be >= 1") }
        let (p, o) = n.multipliedReportingOverflow(by: Int(d))
        guard !o, p <= Int.max / 8 else { throw .invalidArgument("\(name) has too many elements") }
        n = p
        dims.append(Int(d))
    }
    return dims
}

// MARK: - Handles

/// A boxed Swift object handed to C as an opaque handle of type `H`.
@inline(__always)
func makeHandle<T: AnyObject, H>(_ object: T, as _: H.Type) -> UnsafeMutablePointer<H> {
    Unmanaged.passRetained(object).toOpaque().assumingMemoryBound(to: H.self)
}

@inline(__always)
func object<T: AnyObject, H>(_ handle: UnsafeMutablePointer<H>, as _: T.Type) -> T {
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
}

@inline(__always)
func releaseHandle<T: AnyObject, H>(_ handle: UnsafeMutablePointer<H>, as _: T.Type) {
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(handle)).release()
}

// MARK: - Strings from C

/// A required NUL-terminated UTF-8 string of at most 4096 bytes (names, paths).
func cString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> String {
    let p = try required(p, name)
    let n = strnlen(p, 4097)
    guard n <= 4096 else { throw .invalidArgument("\(name) is longer than 4096 bytes") }
    guard let s = String(validatingCString: p) else { throw .invalidArgument("\(name) is not valid UTF-8") }
    return s
}

/// An optional C string: NULL → nil, otherwise as `cString`.
func cStringOrNil(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> String? {
    guard p != nil else { return nil }
    return try cString(p, name)
}

/// A NUL-terminated UTF-8 string of any length: tensor names and metadata have no fixed cap
/// (the header limit applies when the file is written). `name` names the argument.
func cText(_ p: UnsafePointer<CChar>?, _ name: @autoclosure () -> String) throws(PSTError) -> String {
    guard let p else { throw .invalidArgument("\(name()) is NULL") }
    return try utf8Text(UnsafeRawBufferPointer(start: p, count: strlen(p)), name())
}

/// A UTF-8 string given as data plus a length in bytes (NUL bytes allowed). A length beyond
/// the safetensors header limit cannot be written, so it is refused before any byte is read.
func lengthText(_ p: UnsafePointer<CChar>?, _ length: Int64, data dataName: @autoclosure () -> String,
                length lengthName: @autoclosure () -> String) throws(PSTError) -> String {
    guard length >= 0 else { throw .invalidArgument("\(lengthName()) (\(length)) must be >= 0") }
    guard length <= Int64(SafeTensorsFile.maxHeaderBytes) else {
        throw .invalidArgument("\(lengthName()) (\(length)) is more than a safetensors header can hold (\(SafeTensorsFile.maxHeaderBytes) bytes)")
    }
    guard length > 0 else { return "" }
    guard let p else { throw .invalidArgument("\(dataName()) is NULL but \(lengthName()) is \(length)") }
    return try utf8Text(UnsafeRawBufferPointer(start: p, count: Int(length)), dataName())
}

/// One element of a pst_string array.
func lengthText(_ s: pst_string, _ name: @autoclosure () -> String) throws(PSTError) -> String {
    try lengthText(s.data, s.length, data: "\(name()).data", length: "\(name()).length")
}

/// Bytes that must be valid UTF-8; the message gives the offset of the first invalid sequence.
func utf8Text(_ b: UnsafeRawBufferPointer, _ name: @autoclosure () -> String) throws(PSTError) -> String {
    let (text, at) = decodeStrictUTF8(b)
    guard let text else { throw .invalidArgument("\(name()) (\(b.count) bytes) is not valid UTF-8 (at byte \(at))") }
    return text
}

// MARK: - Strings to C

/// The C layer's one owned C string: bytes owned by a handle, followed by a NUL byte, at an
/// address that stays valid for the object's lifetime. C reads them as a C string (`cString`,
/// or `p`) or, with `count`, as a pst_string (a name or metadata string may hold NUL bytes).
final class OwnedCString {
    let p: UnsafeMutablePointer<CChar>
    /// Bytes before the terminating NUL.
    let count: Int
    /// The string itself holds a NUL byte: as a C string it would read shorter than it is.
    let containsNUL: Bool

    init(_ s: String) {
        let u = Array(s.utf8)
        count = u.count
        containsNUL = u.contains(0)
        p = UnsafeMutablePointer<CChar>.allocate(capacity: u.count + 1)
        u.withUnsafeBufferPointer { b in
            for i in 0..<u.count { p[i] = CChar(bitPattern: b[i]) }
        }
        p[u.count] = 0
    }
    deinit { p.deallocate() }

    var cString: UnsafePointer<CChar> { UnsafePointer(p) }
    var string: pst_string { pst_string(data: UnsafePointer(p), length: Int64(count)) }
}

/// Copies `s` NUL-terminated into a caller's buffer of `capacity` bytes, after the sizing rule
/// of the functions that return text (pst_llm_detokenize, pst_trainer_latest_checkpoint):
/// *length gets the byte length (without the NUL) first; a too-small capacity, or a NULL
/// buffer, is PST_ERR_INVALID_ARG with *length set, so a caller can size a second call.
/// (CAPI+LLM.swift still has a copy taking an Int capacity; it goes when its capacities become
/// Int64, the header's rule, and its calls then land here unchanged.)
func copyOutString(_ s: String, _ name: StaticString, _ text: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                   _ length: UnsafeMutablePointer<Int64>) throws(PSTError) {
    let u = Array(s.utf8)
    length.pointee = Int64(u.count)
    try requireCapacity(name, have: text == nil ? 0 : capacity, need: u.count + 1)
    if let text {
        u.withUnsafeBytes { UnsafeMutableRawPointer(text).copyMemory(from: $0.baseAddress!, byteCount: u.count) }
        text[u.count] = 0
    }
}

/// Copies token ids into a caller's buffer of `capacity` ids, after the sizing rule of
/// pst_llm_tokenize: *count gets the number of ids first; a too-small capacity (or a NULL
/// buffer) is PST_ERR_INVALID_ARG. (CAPI+LLM.swift's Int-capacity copy goes as copyOutString's.)
func copyOutIDs(_ out: [Int32], _ ids: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                _ count: UnsafeMutablePointer<Int64>) throws(PSTError) {
    count.pointee = Int64(out.count)
    try requireCapacity("ids", have: ids == nil ? 0 : capacity, need: out.count, unit: "ids")
    if let ids, !out.isEmpty { out.withUnsafeBufferPointer { ids.update(from: $0.baseAddress!, count: out.count) } }
}

/// A comma-separated list of a model's projections ("q_proj, v_proj"; spaces and tabs around
/// names ignored), as pst_llm_add_adapter and pst_trainer_params.target_modules take it;
/// NULL gives nil: every projection of the model.
func targetModuleList(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> [String]? {
    guard let s = try cStringOrNil(p, name) else { return nil }
    func trimmed(_ t: Substring) -> String {
        var t = t
        while let f = t.first, f == " " || f == "\t" { t.removeFirst() }
        while let l = t.last, l == " " || l == "\t" { t.removeLast() }
        return String(t)
    }
    let list = s.split(separator: ",").map(trimmed).filter { !$0.isEmpty }
    guard !list.isEmpty else { throw .invalidArgument("\(name) (\"\(s)\") names no module") }
    return list
}

// MARK: - Structs that grow (struct_size)

/// A C struct whose first field is `size_t struct_size` and that may gain fields at its end
/// (peftswift_types.h, "Structs that grow"). The library accepts any struct_size from
/// `firstVersionSize` (PST_<NAME>_V1_SIZE) up to its own sizeof: it reads, or writes, the
/// caller's struct_size bytes and no more; fields beyond them take their defaults.
protocol GrowableStruct {
    /// sizeof the struct in version 1 (the PST_<NAME>_V1_SIZE constant beside it).
    static var firstVersionSize: Int { get }
    /// The function that fills the struct for a caller ("pst_lora_params_init"), named in the
    /// message of a wrong struct_size; nil for structs the library fills.
    static var initFunction: StaticString? { get }
}

extension pst_quant_state: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_QUANT_STATE_V1_SIZE) }
    static var initFunction: StaticString? { nil }
}
extension pst_lora_params: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_LORA_PARAMS_V1_SIZE) }
    static var initFunction: StaticString? { "pst_lora_params_init" }
}
extension pst_lora_apply_args: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_LORA_APPLY_ARGS_V1_SIZE) }
    static var initFunction: StaticString? { "pst_lora_apply_args_init" }
}
extension pst_adamw_params: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_ADAMW_PARAMS_V1_SIZE) }
    static var initFunction: StaticString? { "pst_adamw_params_init" }
}
extension pst_pager_stats: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_PAGER_STATS_V1_SIZE) }
    static var initFunction: StaticString? { nil }
}
extension pst_tensor: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_TENSOR_V1_SIZE) }
    static var initFunction: StaticString? { nil }
}
extension pst_llm_load_params: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_LLM_LOAD_PARAMS_V1_SIZE) }
    static var initFunction: StaticString? { "pst_llm_load_params_init" }
}
extension pst_llm_info: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_LLM_INFO_V1_SIZE) }
    static var initFunction: StaticString? { nil }
}
extension pst_generate_params: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_GENERATE_PARAMS_V1_SIZE) }
    static var initFunction: StaticString? { "pst_generate_params_init" }
}
extension pst_trainer_params: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_TRAINER_PARAMS_V1_SIZE) }
    static var initFunction: StaticString? { "pst_trainer_params_init" }
}
extension pst_train_progress: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_TRAIN_PROGRESS_V1_SIZE) }
    static var initFunction: StaticString? { nil }
}
extension pst_trainer_info: GrowableStruct {
    static var firstVersionSize: Int { Int(PST_TRAINER_INFO_V1_SIZE) }
    static var initFunction: StaticString? { nil }
}

/// The struct_size at the start of a caller's struct of type T, checked against
/// T.firstVersionSize ... MemoryLayout<T>.size. `field` names it in the message
/// ("params->struct_size").
func checkedStructSize<T: GrowableStruct>(_ p: UnsafeRawPointer, _: T.Type, _ field: @autoclosure () -> String) throws(PSTError) -> Int {
    let have = p.loadUnaligned(as: Int.self)   // size_t struct_size, the first field
    let size = MemoryLayout<T>.size, first = T.firstVersionSize
    guard have >= first && have <= size else {
        let range = first == size ? " (\(size))" : ": \(size) in this version, down to \(first) for a caller built against an earlier header"
        let hint = T.initFunction.map { "; use \($0)" } ?? ""
        throw .invalidArgument("\(field()) (\(have)) must be sizeof(\(T.self))\(range)\(hint)")
    }
    return have
}

/// A struct the caller passes in: its first struct_size bytes over `defaults` (the values of
/// the struct's _init function), so fields added after the caller was compiled keep their
/// defaults. `name` is the argument ("params"); a wrong struct_size is PST_ERR_INVALID_ARG
/// naming "params->struct_size" and its value.
///
///     var p = defaults
///     if let params { p = try readStruct(params, over: p, "params") }
func readStruct<T: GrowableStruct>(_ p: UnsafePointer<T>, over defaults: T, _ name: StaticString) throws(PSTError) -> T {
    let n = try checkedStructSize(UnsafeRawPointer(p), T.self, "\(name)->struct_size")
    var value = defaults
    withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(start: UnsafeRawPointer(p), count: n)) }
    return value
}

/// Element `index` of a caller's array of structs. The array is laid out with the caller's
/// sizeof, so the stride is tensors[0].struct_size (checked as by readStruct) and every
/// element's struct_size must equal it. Messages name "name[i].struct_size".
func readStructElement<T: GrowableStruct>(_ p: UnsafePointer<T>, _ index: Int, over defaults: T, _ name: StaticString) throws(PSTError) -> T {
    let base = UnsafeRawPointer(p)
    let stride = try checkedStructSize(base, T.self, "\(name)[0].struct_size")
    let element = base + index * stride
    if index > 0 {
        let n = try checkedStructSize(element, T.self, "\(name)[\(index)].struct_size")
        guard n == stride else {
            throw .invalidArgument("\(name)[\(index)].struct_size (\(n)) must equal \(name)[0].struct_size (\(stride)): the array is laid out with one sizeof")
        }
    }
    var value = defaults
    withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(start: element, count: stride)) }
    return value
}

/// A struct the library fills: checked before any work, written later for the caller's
/// struct_size bytes only (the struct_size field keeps the caller's value).
///
///     let out = try structOutput(stats, "stats")   // checks stats->struct_size
///     ...
///     out.store(value)
struct StructOutput<T: GrowableStruct> {
    let pointer: UnsafeMutableRawPointer
    /// The caller's struct_size.
    let size: Int

    func store(_ value: T) {
        withUnsafeBytes(of: value) { v in
            let header = MemoryLayout<Int>.size   // struct_size stays the caller's
            (pointer + header).copyMemory(from: v.baseAddress! + header, byteCount: size - header)
        }
    }
}

func structOutput<T: GrowableStruct>(_ p: UnsafeMutablePointer<T>, _ name: StaticString) throws(PSTError) -> StructOutput<T> {
    StructOutput(pointer: UnsafeMutableRawPointer(p), size: try checkedStructSize(UnsafeRawPointer(p), T.self, "\(name)->struct_size"))
}

// MARK: - Compute dtype

/// A compute dtype from C: PST_DTYPE_F32 or PST_DTYPE_BF16 (ComputeDType), named `field` in the error.
func computeDType(_ v: Int32, _ field: @autoclosure () -> String) throws(PSTError) -> ComputeDType {
    guard let d = ComputeDType(rawValue: v) else {
        throw .invalidArgument("\(field()) (\(v)) is not PST_DTYPE_F32 or PST_DTYPE_BF16")
    }
    return d
}
