//! Socket addresses in the C form, for the socket calls std does not wrap (sendmmsg,
//! SO_REUSEPORT before bind).

use std::net::SocketAddr;

/// The socket address in the C form, and its length.
pub fn to_c(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid, and large enough for either form.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families() {
        let (v4, len) = to_c("198.18.0.2:7000".parse().unwrap());
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        // SAFETY: to_c wrote a sockaddr_in.
        let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const v4).cast()) };
        assert_eq!(sin.sin_family, libc::AF_INET as u16);
        assert_eq!(u16::from_be(sin.sin_port), 7000);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [198, 18, 0, 2]);

        let (v6, len) = to_c("[2001:2::2]:53".parse().unwrap());
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in6>());
        // SAFETY: to_c wrote a sockaddr_in6.
        let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const v6).cast()) };
        assert_eq!(sin6.sin6_family, libc::AF_INET6 as u16);
        assert_eq!(u16::from_be(sin6.sin6_port), 53);
        assert_eq!(sin6.sin6_addr.s6_addr[..4], [0x20, 0x01, 0, 2]);
    }
}
