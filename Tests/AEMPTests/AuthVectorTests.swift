import Testing

@testable import AEMP

/// Handshake tokens against `aemp-vectors/auth-vectors.json`, computed by the real Perl functions
/// (aemp-protocol §4.4, checklist §12.2).
@Suite("Auth vectors")
struct AuthVectorTests {
    /// 6 synthetic cases + 17 captured handshakes (aemp-vectors/README.md).
    static let expectedCaseCount = 23

    @Test("the vector file has every case")
    func caseCount() throws {
        let cases = try AuthVector.all()
        #expect(cases.count == Self.expectedCaseCount)
        #expect(cases.count > 20)
        #expect(cases.filter { $0.source == "synthetic" }.count == 6)
        #expect(cases.filter { $0.source == "wire" }.count == 17)
    }

    @Test("hmac_sha3_512 and cleartext tokens match Perl", arguments: try AuthVector.all())
    func tokens(_ v: AuthVector) {
        let auth = Authenticator(secret: v.secretBytes)

        // The exact bytes hashed for the token we send: our two lines, then the peer's, each + LF.
        let input = Authenticator.message(first: v.local, second: v.remote)
        #expect(Vectors.hex(input) == Vectors.hex(v.hmacInputLocal))

        #expect(auth.tokenToSend(.hmacSHA3_512, local: v.local, remote: v.remote) == v.hmacLocalTokenSent)
        #expect(auth.tokenExpected(.hmacSHA3_512, local: v.local, remote: v.remote) == v.hmacRemoteTokenExpected)
        // Seen from the other side the roles swap.
        #expect(auth.tokenToSend(.hmacSHA3_512, local: v.remote, remote: v.local) == v.hmacRemoteTokenExpected)
        #expect(auth.tokenExpected(.hmacSHA3_512, local: v.remote, remote: v.local) == v.hmacLocalTokenSent)

        #expect(auth.tokenToSend(.cleartext, local: v.local, remote: v.remote) == v.cleartextToken)
        #expect(auth.tokenExpected(.cleartext, local: v.local, remote: v.remote) == v.cleartextToken)
        #expect(v.cleartextToken == Vectors.hex(v.secretBytes))
    }

    @Test("a secret string is hashed as its UTF-8 octets", arguments: try AuthVector.all())
    func secretString(_ v: AuthVector) {
        // The vectors give both the secret text and its octets; they agree for every case
        // (including the non-ASCII one), so the String initializer must give the same tokens.
        #expect(Array(v.secret.utf8) == v.secretBytes)
        let auth = Authenticator(secret: v.secret)
        #expect(auth.tokenToSend(.hmacSHA3_512, local: v.local, remote: v.remote) == v.hmacLocalTokenSent)
    }

    @Test("a wrong secret or swapped lines give a different token")
    func mismatches() throws {
        let v = try #require(try AuthVector.all().first)
        // (Appending NUL would not do: HMAC zero-pads keys shorter than the block, in Perl too.)
        let wrong = Authenticator(secret: v.secretBytes + Array("x".utf8))
        #expect(wrong.tokenToSend(.hmacSHA3_512, local: v.local, remote: v.remote) != v.hmacLocalTokenSent)
        let right = Authenticator(secret: v.secretBytes)
        #expect(right.tokenToSend(.hmacSHA3_512, local: (v.local.1, v.local.0), remote: v.remote) != v.hmacLocalTokenSent)
        #expect(!Authenticator.constantTimeEqual(v.hmacLocalTokenSent, v.hmacRemoteTokenExpected))
        #expect(Authenticator.constantTimeEqual(v.hmacLocalTokenSent, v.hmacLocalTokenSent))
        #expect(!Authenticator.constantTimeEqual(v.hmacLocalTokenSent, String(v.hmacLocalTokenSent.dropLast())))
    }
}
