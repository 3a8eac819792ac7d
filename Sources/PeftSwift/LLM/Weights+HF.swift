#if canImport(Glibc)
import Glibc
#endif

/// The weights of a Hugging Face checkpoint directory: `model.safetensors`, or the shards a
/// `model.safetensors.index.json` lists (its `weight_map`), each opened (memory-mapped) when
/// the model first asks for one of its tensors. F32, BF16 and F16 tensors, converted to fp32.
public final class SafeTensorsWeights {
    public let directory: String
    private var files: [String: SafeTensorsFile] = [:]
    private var whereIs: [String: String] = [:]

    public static let singleFileName = "model.safetensors"
    public static let indexFileName = "model.safetensors.index.json"

    /// Finds the weights of `directory`. `PST_ERR_NOT_FOUND` when it has neither file,
    /// `PST_ERR_CORRUPT` for an index without a `weight_map` of file names.
    public init(directory dir: String) throws(PSTError) {
        directory = dir
        let single = dir + "/" + SafeTensorsWeights.singleFileName, index = dir + "/" + SafeTensorsWeights.indexFileName
        if access(single, F_OK) == 0 {
            let f = try SafeTensorsFile(path: single)
            files[single] = f
            for n in f.names { whereIs[n] = single }
        } else if access(index, F_OK) == 0 {
            let ij = try JSON.parse(try FileSystem.readAll(index, limit: 64 << 20), source: index)
            guard let wm = ij.objectValue?["weight_map"]?.objectValue else { throw .corrupt("\(index): no 'weight_map' object") }
            for m in wm.members {
                guard let shard = m.value.stringValue, !shard.contains("/") else {
                    throw .corrupt("\(index): weight_map entry '\(m.key)' is not a file name")
                }
                whereIs[m.key] = dir + "/" + shard
            }
        } else {
            throw .notFound("\(dir): neither \(SafeTensorsWeights.singleFileName) nor \(SafeTensorsWeights.indexFileName)")
        }
    }

    /// The `WeightProvider` of the directory: fills `destination` with tensor `name` of shape
    /// `shape`. `PST_ERR_NOT_FOUND` for a missing tensor, `PST_ERR_UNSUPPORTED` for another
    /// dtype, `PST_ERR_CORRUPT` for a shape other than the config's.
    public func read(_ name: String, _ shape: [Int], _ destination: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        guard let path = whereIs[name] else { throw .notFound("\(directory): tensor '\(name)' is missing") }
        let f: SafeTensorsFile
        if let o = files[path] { f = o } else { f = try SafeTensorsFile(path: path); files[path] = f }
        guard f.contains(name) else { throw .notFound("\(path): tensor '\(name)' is missing") }
        let v = try f.tensor(name)
        guard [.f32, .bf16, .f16].contains(v.dtype) else {
            throw .unsupported("\(path): tensor '\(name)' is \(v.dtype.rawValue) (supported: F32, BF16, F16)")
        }
        guard v.shape == shape else {
            throw .corrupt("\(path): tensor '\(name)' has shape \(v.shape), config.json needs \(shape)")
        }
        try v.copyFloats(into: destination)
    }
}
