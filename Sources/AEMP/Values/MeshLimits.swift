import NIOCore

/// What the mesh can carry (aemp-protocol §14): the limits every codec and HTTP entry point share.
///
/// Depth is counted as Perl's JSON::XS and CBOR::XS count it (`Value.nestingDepth`): the packet
/// array is one level. Perl refuses a deeper packet inside a callback AnyEvent ignores, and every
/// later packet on that connection is lost with it, both sides still "up"; so nothing deeper may
/// ever be sent, and a value must fit the deepest packet it will ever travel in.
public enum MeshLimits {
    /// Deepest nesting Perl's JSON::XS and CBOR::XS decode, the packet array counted as one level.
    /// A packet deeper than this is lost on a Perl node together with everything after it.
    public static let maxDepth = 512

    /// Deepest a message may nest, the message array counted as one level. A message travels as
    /// the packet `[portname, args…]` (`snd`), and a call only appends a string (the reply port),
    /// so the packet nests exactly as deep as the message: the whole `maxDepth`.
    public static let maxMessageDepth = maxDepth

    /// Levels above a database value in the deepest packet that ever carries it, the packet array
    /// included. Every packet holding a db value (aemp-protocol §11; Perl 2.02 lines as in §0,
    /// G = MP/Global.pm, K = MP/Kernel.pm):
    ///
    /// | packet | shape | levels above the value |
    /// |---|---|---|
    /// | `g_upd` setter → master (K 784-825, `db_set`/`db_reg`) | `["","g_upd",fam,{key:v}]` | 2 |
    /// | `g_upd` global → globals (G 132) | `["","g_upd",fam,{key:v},[del]]` | 2 |
    /// | `g_chg1` to a new watcher (G 257) | `["","g_chg1",fam,{key:v}]` | 2 |
    /// | `g_chg2` to watchers (G 139) | `["","g_chg2",fam,{key:v},[del]]` | 2 |
    /// | `g_reply` to `db_family` (G 208) | `["","g_reply",id,{key:v}]` | 2 |
    /// | `g_reply` to `db_values` (G 218) | `["","g_reply",id,[v…]]` | 2 |
    /// | `g_slave`, a node's whole db to each new master (K 733-767) | `["","g_slave",{fam:{key:v}}]` | 3 |
    /// | `g_set`, merged slave dbs to another global (G 289) | `["","g_set",{fam:{key:v}}]` | 3 |
    public static let databaseWrapperDepth = 3

    /// Deepest a database value may nest (`db_set`, `db_reg`): `maxDepth` minus the deepest
    /// wrapper, `g_slave` / `g_set` (see `databaseWrapperDepth`). A deeper value would pass in
    /// `g_upd` and then wedge the link the next time the node re-attaches to a master.
    public static let maxDatabaseValueDepth = maxDepth - databaseWrapperDepth

    /// Default of the largest packet a node accepts from a peer (`NodeConfiguration.maxPacketSize`,
    /// the gateway's `--max-packet`). Perl has no limit (aemp-protocol §14) and `g_slave` carries a
    /// node's whole database in one packet, so the default is generous; it bounds only what one
    /// peer can make this node buffer.
    public static let defaultMaxPacketSize = 64 << 20

    /// The size of `packet` in whichever framing encodes it larger: the framing is chosen per peer
    /// at its handshake (aemp-protocol §4.1), so a packet must fit both. Encodes the packet twice.
    public static func encodedSize(ofPacket packet: [Value]) -> Int {
        let cbor = CBORCodec.encode(.array(packet)).count
        var buffer = ByteBuffer()
        // The mesh's JSON (Perl's lax UTF-8 for code points HTTP would replace); a packet too deep
        // to write is refused for its depth before its size matters.
        let json = (try? JSONCodec.encode(.array(packet), into: &buffer)).map { buffer.readableBytes } ?? cbor
        return max(cbor, json)
    }

    /// Whether a packet built from `inputBytes` bytes of JSON (plus a few short strings) may come
    /// near `maxPacketSize` in either framing, so that `encodedSize(ofPacket:)` must decide.
    /// Encoding grows JSON at most about fivefold (`1e-7` becomes `9.9999999999999995e-08` in
    /// JSON, a 9-byte float in CBOR; `é` becomes `\u00e9`); the extra kilobyte is the port names.
    public static func mayExceed(maxPacketSize: Int, inputBytes: Int) -> Bool {
        inputBytes > (maxPacketSize - 1024) / 5
    }
}
