import CPeftSwift

/// The library's version and ABI level, from the same macros the C header carries.
public enum Version {
    public static let major = Int(PST_VERSION_MAJOR)
    public static let minor = Int(PST_VERSION_MINOR)
    public static let patch = Int(PST_VERSION_PATCH)
    public static let abi = Int32(PST_ABI_VERSION)
    /// "MAJOR.MINOR.PATCH"
    public static let string: StaticString = "0.1.0"
}
