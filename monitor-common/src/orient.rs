//! Which end of a flow is the client: the one answer every user of a
//! [`FlowKey`] asks for (the key orders its endpoints by address, not by
//! role; [`FlowValue::client_is_a`] records the role).

use crate::flow::{Addr, FlowKey, FlowValue};

/// One end of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Its address (IPv6 words; IPv4 as IPv4-mapped IPv6).
    pub addr: Addr,
    /// Its port.
    pub port: u16,
}

/// The client end and the server end of the flow `key`, in that order.
#[inline(always)]
pub fn client_server(key: &FlowKey, value: &FlowValue) -> (End, End) {
    let a = End {
        addr: key.addr_a,
        port: key.port_a,
    };
    let b = End {
        addr: key.addr_b,
        port: key.port_b,
    };
    if value.client_is_a != 0 {
        (a, b)
    } else {
        (b, a)
    }
}

/// Whether the sender of a segment is the client: `sender_is_a` says
/// whether it is the key's end A (the eBPF programs know that from the
/// packet; the value records which end the client is).
#[inline(always)]
pub fn sender_is_client(sender_is_a: bool, value: &FlowValue) -> bool {
    sender_is_a == (value.client_is_a != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::ipv4_mapped;

    #[test]
    fn the_client_is_whichever_end_the_value_names() {
        let client = ipv4_mapped([10, 0, 0, 9]);
        let server = ipv4_mapped([10, 0, 0, 1]);
        let (key, client_is_a) = FlowKey::from_endpoints(&client, 40000, &server, 443);
        let mut value = FlowValue {
            client_is_a: client_is_a as u8,
            ..FlowValue::default()
        };
        let (c, s) = client_server(&key, &value);
        assert_eq!((c.addr, c.port), (client, 40000));
        assert_eq!((s.addr, s.port), (server, 443));
        value.client_is_a ^= 1;
        let (c, s) = client_server(&key, &value);
        assert_eq!((c.addr, c.port), (server, 443));
        assert_eq!((s.addr, s.port), (client, 40000));
        // Now the value names end A as the client.
        assert!(sender_is_client(true, &value));
        assert!(!sender_is_client(false, &value));
    }
}
