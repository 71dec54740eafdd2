import AEMP
import Foundation

/// Decodes JSON with the library's codec (its Perl dialect, which also reads Python's bare
/// `Infinity`/`NaN`) to 2048 levels, on a thread of its own with a 64 MiB stack: the second JSON
/// reader recurses, and tests decode documents deeper than the mesh's 512 levels that hold what
/// jansson refuses (the edge-value transcripts, a gateway's answer with a 512-level message and
/// big integers), whatever a sanitizer does to stack frames.
public func decodeJSONOnBigStack(_ bytes: [UInt8]) throws -> Value {
    let result = Watched<Result<Value, JSONCodecError>?>(nil)
    let thread = Thread {
        let r = bytes.withUnsafeBytes { buffer in
            Result { () throws(JSONCodecError) -> Value in
                try JSONCodec.decode(
                    buffer, dialect: .perl, maxDepth: JSONCodec.janssonMaxDepth, readerMaxDepth: JSONCodec.janssonMaxDepth)
            }
        }
        result.update { $0 = r }
    }
    thread.stackSize = 64 << 20
    thread.start()
    while result.read({ $0 }) == nil { usleep(1000) }
    return try result.read({ $0 })!.get()
}
