//! The conformance kit against the shared standalone Redis (127.0.0.1:17001), over TCP and over
//! its Unix socket.
mod common;

cache_core::cache_conformance!(service = "redis", optional_backend = common::standalone());

/// The same server through its Unix socket (a `unix://` URL, database 5).
mod unix_socket {
    use super::common;
    use cache_core::cache_conformance;

    cache_conformance!(
        service = "redis",
        optional_backend = common::standalone_unix(5)
    );
}
