//! I/O errors as short phrases for people (bind, connect and resolve failures).

/// An I/O error as a short lower-case phrase ("address already in use").
pub fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        AddrInUse => "address already in use".into(),
        AddrNotAvailable => "address not available on this machine".into(),
        PermissionDenied => "permission denied (ports below 1024 need privileges)".into(),
        ConnectionRefused => "connection refused".into(),
        TimedOut => "timed out".into(),
        _ => {
            // std's text ends with " (os error N)"; keep it, it is what people search for.
            let text = e.to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}
