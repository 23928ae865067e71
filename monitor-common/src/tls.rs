//! TLS wire constants the tracker needs (RFC 5246, RFC 8446).

/// Record content type: ChangeCipherSpec.
pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
/// Record content type: alert.
pub const CT_ALERT: u8 = 21;
/// Record content type: handshake.
pub const CT_HANDSHAKE: u8 = 22;
/// Record content type: application data (also every encrypted TLS 1.3 record).
pub const CT_APPLICATION_DATA: u8 = 23;
/// Record content type: heartbeat (RFC 6520).
pub const CT_HEARTBEAT: u8 = 24;

/// Length of a TLS record header: type (1), legacy version (2), length (2).
pub const RECORD_HEADER_LEN: usize = 5;
/// Length of a handshake message header: type (1), length (3).
pub const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest legal record body: 2^14 plus 2048 bytes of expansion (RFC 5246 6.2.3).
pub const MAX_RECORD_LEN: u16 = (1 << 14) + 2048;

/// Handshake type: HelloRequest (TLS <= 1.2, server asks for a renegotiation).
pub const HS_HELLO_REQUEST: u8 = 0;
/// Handshake type: ClientHello.
pub const HS_CLIENT_HELLO: u8 = 1;
/// Handshake type: ServerHello (also HelloRetryRequest in TLS 1.3).
pub const HS_SERVER_HELLO: u8 = 2;
/// Handshake type: NewSessionTicket.
pub const HS_NEW_SESSION_TICKET: u8 = 4;
/// Handshake type: Certificate.
pub const HS_CERTIFICATE: u8 = 11;
/// Handshake type: ServerKeyExchange.
pub const HS_SERVER_KEY_EXCHANGE: u8 = 12;
/// Handshake type: CertificateRequest.
pub const HS_CERTIFICATE_REQUEST: u8 = 13;
/// Handshake type: ServerHelloDone.
pub const HS_SERVER_HELLO_DONE: u8 = 14;
/// Handshake type: ClientKeyExchange.
pub const HS_CLIENT_KEY_EXCHANGE: u8 = 16;
/// Handshake type: Finished.
pub const HS_FINISHED: u8 = 20;
/// Handshake type: KeyUpdate (TLS 1.3).
pub const HS_KEY_UPDATE: u8 = 24;

/// Extension type: pre_shared_key (a TLS 1.3 ServerHello with it resumes a session).
pub const EXT_PRE_SHARED_KEY: u16 = 0x0029;
/// Extension type: supported_versions (a TLS 1.3 ServerHello carries the chosen version).
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;

/// Wire version of TLS 1.0.
pub const VERSION_TLS10: u16 = 0x0301;
/// Wire version of TLS 1.2.
pub const VERSION_TLS12: u16 = 0x0303;
/// Wire version of TLS 1.3.
pub const VERSION_TLS13: u16 = 0x0304;

/// First 8 bytes of the ServerHello random that marks a HelloRetryRequest
/// (SHA-256 of "HelloRetryRequest", RFC 8446 4.1.3).
pub const HRR_RANDOM_PREFIX: u64 = 0xCF21_AD74_E59A_6111;

/// Body length of a TLS 1.3 record that carries exactly one KeyUpdate with an
/// AEAD tag of 16 bytes and no padding: 4 (handshake header) + 1 (request_update)
/// + 1 (inner content type) + 16 (tag).
pub const KEY_UPDATE_RECORD_LEN: u16 = 22;

/// Is `b` (the first bytes of a TCP stream) the start of a TLS ClientHello?
///
/// Checks the record header (handshake, version 3.x, sane length) and that the
/// first handshake message is a ClientHello. Needs 6 bytes.
#[inline(always)]
pub fn starts_with_client_hello(b: &[u8; 6]) -> bool {
    could_start_client_hello(b, 6)
}

/// Could the first `n` bytes of `b` (a stream's first segment, which may be
/// shorter than the 6 bytes [`starts_with_client_hello`] needs) be the start
/// of a TLS ClientHello? Checks each byte that is there: a client that sends
/// its ClientHello one byte per segment must not escape tracking. `n` of 6
/// or more is the full check; `n` of 0 is `false`.
#[inline(always)]
pub fn could_start_client_hello(b: &[u8; 6], n: usize) -> bool {
    if n == 0 || b[0] != CT_HANDSHAKE {
        return false;
    }
    if n >= 2 && b[1] != 3 {
        return false;
    }
    if n >= 3 && b[2] > 4 {
        return false;
    }
    if n >= 5 {
        let len = u16::from_be_bytes([b[3], b[4]]);
        if len < HANDSHAKE_HEADER_LEN as u16 || len > MAX_RECORD_LEN {
            return false;
        }
    }
    n < 6 || b[5] == HS_CLIENT_HELLO
}
