//! Broker-address mapping for clients on the host.
//!
//! The broker has one listener, advertised as `broker:9092`, the name containers use on the
//! lab's network. On the host that name does not resolve and the port is the published one,
//! so labctl's own Kafka clients must map `broker:9092` to `127.0.0.1:<published port>`.
//! librdkafka has a resolve callback for exactly this, but the rdkafka crate (0.38/0.39)
//! creates the native configuration internally and offers no way to install it. librdkafka
//! (statically linked here) resolves names with `getaddrinfo`, so labctl provides that symbol:
//! names registered through [`map_broker`] are rewritten, every other lookup goes unchanged to
//! the C library's own implementation.

use std::{
    collections::HashMap,
    ffi::{c_char, c_int, CStr, CString},
    sync::{OnceLock, RwLock},
};

use anyhow::Result;

use crate::model::{address::parse_host_port, config::Config};

type GetAddrInfo = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const libc::addrinfo,
    *mut *mut libc::addrinfo,
) -> c_int;

/// (advertised host, advertised port) -> (host, port) to connect to.
type Table = RwLock<HashMap<(String, String), (CString, CString)>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Makes `host:port` (as the broker advertises itself) reach `to_host:to_port` in this process.
pub fn map_broker(host: &str, port: u16, to_host: &str, to_port: u16) {
    let (Ok(h), Ok(p)) = (CString::new(to_host), CString::new(to_port.to_string())) else { return };
    table()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert((host.to_string(), port.to_string()), (h, p));
}

fn real_getaddrinfo() -> GetAddrInfo {
    static REAL: OnceLock<usize> = OnceLock::new();
    let addr = *REAL.get_or_init(|| {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; the result is checked below.
        unsafe { libc::dlsym(libc::RTLD_NEXT, c"getaddrinfo".as_ptr()) as usize }
    });
    assert!(addr != 0, "the C library has no getaddrinfo");
    // SAFETY: the symbol is the C library's getaddrinfo, which has this signature.
    unsafe { std::mem::transmute::<usize, GetAddrInfo>(addr) }
}

/// # Safety
/// Same contract as the C library's `getaddrinfo`.
#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const libc::addrinfo,
    res: *mut *mut libc::addrinfo,
) -> c_int {
    if !node.is_null() && !service.is_null() {
        let key = (
            CStr::from_ptr(node).to_string_lossy().into_owned(),
            CStr::from_ptr(service).to_string_lossy().into_owned(),
        );
        let mapped = table().read().ok().and_then(|t| t.get(&key).cloned());
        if let Some((h, p)) = mapped {
            return real_getaddrinfo()(h.as_ptr(), p.as_ptr(), hints, res);
        }
    }
    real_getaddrinfo()(node, service, hints, res)
}

/// Registers `broker.address_map` with labctl's Kafka clients (see `kafka::resolve`).
pub fn apply_address_map(config: &Config) -> Result<()> {
    for (from, to) in &config.broker.address_map {
        let (fh, fp) = parse_host_port("broker.address_map", from)?;
        let (th, tp) = parse_host_port("broker.address_map", to)?;
        map_broker(&fh, fp, &th, tp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves through the `getaddrinfo` symbol the way librdkafka does (node and port string).
    fn lookup(host: &str, port: &str) -> Option<std::net::SocketAddr> {
        let (h, p) = (CString::new(host).unwrap(), CString::new(port).unwrap());
        let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
        hints.ai_family = libc::AF_INET;
        hints.ai_socktype = libc::SOCK_STREAM;
        let mut res = std::ptr::null_mut();
        // SAFETY: valid C strings, zeroed hints, out-pointer freed below.
        let rc = unsafe { libc::getaddrinfo(h.as_ptr(), p.as_ptr(), &hints, &mut res) };
        if rc != 0 {
            return None;
        }
        // SAFETY: on success res points to at least one AF_INET addrinfo.
        let addr = unsafe {
            let sin = *((*res).ai_addr as *const libc::sockaddr_in);
            libc::freeaddrinfo(res);
            std::net::SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        };
        Some(addr)
    }

    #[test]
    fn mapped_names_resolve_and_others_pass_through() {
        map_broker("labctl-test-broker", 9092, "127.0.0.1", 39092);
        assert_eq!(lookup("labctl-test-broker", "9092"), Some("127.0.0.1:39092".parse().unwrap()));
        assert_eq!(lookup("127.0.0.1", "80"), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(
            lookup("labctl-test-broker", "9093"),
            None,
            "only the advertised port is mapped"
        );
    }
}
