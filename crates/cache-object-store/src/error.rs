//! `object_store` errors → [`CacheError`]s with an honest transient flag.

use cache_core::CacheError;

/// Maps an `object_store` error. `NotFound` is handled by the callers (it is a miss, or "did not
/// exist"), so here it means a missing bucket or container: not transient.
pub(crate) fn map(backend: &str, op: &'static str, e: object_store::Error) -> CacheError {
    let transient = is_transient(&e);
    CacheError::backend(backend, op, transient, e)
}

/// Whether retrying later can help: network failures, timeouts, 5xx and 429 answers (which
/// `object_store` already retried within its retry budget) are transient; authentication,
/// permission, missing bucket and 4xx answers are not.
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. } => false,
        E::Generic { .. } => !client_error_status(e),
        _ => true,
    }
}

/// Whether the error chain reports a 4xx answer other than 408 (timeout) and 429 (throttled).
///
/// `object_store` keeps the HTTP status in a type it does not export, so this reads the
/// status from its message ("Server returned non-2xx status code: 400 Bad Request: ...").
fn client_error_status(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if let Some(i) = msg.find("status code: ") {
            let code: String = msg[i + "status code: ".len()..].chars().take(3).collect();
            if let Ok(code) = code.parse::<u16>() {
                return (400..500).contains(&code) && code != 408 && code != 429;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Msg(&'static str);
    impl std::fmt::Display for Msg {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Msg {}

    fn generic(msg: &'static str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Msg(msg)),
        }
    }

    #[test]
    fn classification() {
        assert!(is_transient(&generic(
            "Error performing GET in 1s - Server returned non-2xx status code: 503 Service Unavailable: "
        )));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 429 Too Many Requests"
        )));
        assert!(is_transient(&generic(
            "HTTP error: error sending request: connection refused"
        )));
        assert!(!is_transient(&generic(
            "Server returned non-2xx status code: 400 Bad Request: invalid uploadType"
        )));
        assert!(!is_transient(&object_store::Error::PermissionDenied {
            path: "p".into(),
            source: Box::new(Msg("denied")),
        }));
        let e = map("s3", "get", generic("status code: 500"));
        assert!(e.is_transient());
        assert_eq!(e.backend_name(), Some("s3"));
    }
}
