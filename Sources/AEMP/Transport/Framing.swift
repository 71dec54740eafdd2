import NIOCore

/// A data-phase framing (aemp-protocol §5). `storable` is Perl-only and never offered.
public enum Framing: String, Sendable, CaseIterable {
    case json
    case cbor

    /// Appends one packet in this framing to `buffer`. Refuses a packet nested deeper than Perl
    /// decodes (`MeshLimits.maxDepth`), which would wedge the link (aemp-protocol §14).
    package func encode(_ packet: [Value], into buffer: inout ByteBuffer) throws {
        switch self {
        case .json: try JSONCodec.encode(.array(packet), into: &buffer)
        case .cbor: try CBORCodec.encode(.array(packet), into: &buffer)
        }
    }
}

/// An incremental decoder for one direction's framing.
package enum PacketDecoder: Sendable {
    case json(JSONStreamDecoder)
    case cbor(CBORStreamDecoder)

    /// A decoder for `framing` refusing packets larger than `maxPacketSize`.
    package init(_ framing: Framing, maxPacketSize: Int) {
        switch framing {
        case .json: self = .json(JSONStreamDecoder(maxPacketSize: maxPacketSize))
        case .cbor: self = .cbor(CBORStreamDecoder(maxPacketSize: maxPacketSize))
        }
    }

    /// Returns and forgets what the decoder has to tell about the packets it read.
    package mutating func takeNotes() -> DecoderNotes {
        switch self {
        case .json(var d):
            guard !d.notes.isEmpty else { return DecoderNotes() }
            defer { d.notes = DecoderNotes(); self = .json(d) }
            return d.notes
        case .cbor(var d):
            guard !d.notes.isEmpty else { return DecoderNotes() }
            defer { d.notes = DecoderNotes(); self = .cbor(d) }
            return d.notes
        }
    }

    /// The next complete packet (an array's elements), or `nil` when more bytes are needed.
    package mutating func next(from buffer: inout ByteBuffer) throws -> [Value]? {
        let value: Value?
        switch self {
        case .json(var d):
            value = try d.next(from: &buffer)
            self = .json(d)
        case .cbor(var d):
            value = try d.next(from: &buffer)
            self = .cbor(d)
        }
        guard let value else { return nil }
        guard case .array(let elements) = value else { return [] }
        return elements
    }
}
