import AEMP

extension Node {
    /// Tests send to port IDs they hold as strings (from the gateway's JSON, a scripted peer): one
    /// that does not parse is a bug of the test, which stops it. (The library has no such
    /// overload: a string from elsewhere is parsed with `PortID(_:)`, and a nil is the caller's
    /// to handle, never dropped silently.)
    public func snd(_ port: String, _ message: [Value]) {
        guard let id = PortID(port) else { preconditionFailure("\(port.debugDescription) is not a port ID") }
        snd(id, message)
    }
}
