//! Process limits: the open-files limit a server raises at start, and telling a failure
//! for want of descriptors (or buffers, memory) from the other side's fault.

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// Each connection costs one descriptor (two for a proxy session), and the default soft
/// limit (often 1024) is far below what a server is allowed.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY, which no real count reaches.
    let count = |limit: Option<u64>| limit.unwrap_or(u64::MAX);
    if count(lim.current) < count(lim.maximum) {
        let wanted = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        setrlimit(Resource::Nofile, wanted)?;
        return Ok(count(lim.maximum));
    }
    Ok(count(lim.current))
}

/// Errors that mean "this process or the system is out of something" (descriptors,
/// buffers, memory), not "that peer failed": the caller waits and retries, and blames
/// no client or upstream.
///
/// The errno is looked for along the error's whole source chain: the runtime wraps a
/// failed name lookup in an error of its own ("could not resolve address ...") whose
/// source is the resolver's error, and `raw_os_error` sees only the outer one.
pub fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| inner as _);
    if exhausted(e.raw_os_error()) {
        return true;
    }
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if exhausted(io.raw_os_error()) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner as _);
                continue;
            }
        }
        next = err.source();
    }
    false
}

/// Runs `f` (a blocking call that may fail without an errno of its own, such as a name
/// lookup) and returns what it returned with the errno it left on this thread, if any.
///
/// glibc's `getaddrinfo`, when it cannot open `/etc/hosts` or a socket to the DNS
/// server for want of a descriptor, answers "Name or service not known" and leaves
/// `EMFILE` in errno. That errno, read on the thread that made the lookup right after it,
/// is the lookup's own evidence, whereas probing for a descriptor later races with
/// sessions that free theirs meanwhile. errno is cleared first, so a value left by an
/// earlier call on this thread is not taken for it.
pub fn errno_left_by<T>(f: impl FnOnce() -> T) -> (T, Option<i32>) {
    // The C library's errno, which the resolver sets; rustix's calls bypass libc and
    // never touch it, so it is reached through the `errno` crate.
    errno::set_errno(errno::Errno(0));
    let out = f();
    let left = errno::errno().0;
    (out, (left != 0).then_some(left))
}

/// Whether `errno` means "out of descriptors, buffers or memory" (see
/// [`is_resource_exhaustion`]).
pub fn exhausted(errno: Option<i32>) -> bool {
    use rustix::io::Errno;
    matches!(
        errno.map(Errno::from_raw_os_error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Whether this process can have one more socket right now: `Err` with the reason when
/// it cannot for want of descriptors, buffers or memory ([`is_resource_exhaustion`]).
///
/// For failures that come without an errno: a resolver may report a lookup it could not
/// make for want of a descriptor as a plain "temporary failure". A caller whose
/// operation failed that way asks this before blaming the other side.
pub fn socket_available() -> std::io::Result<()> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with};
    // The probe is dropped, so closed, at once.
    match socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) {
        Ok(_probe) => Ok(()),
        Err(e) if is_resource_exhaustion(&e.into()) => Err(e.into()),
        Err(_) => Ok(()), // another reason (no IPv4 here, a sandbox): not a shortage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[test]
    fn exhaustion_is_found_under_a_wrapping_error() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "could not resolve address: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let emfile = || std::io::Error::from(Errno::MFILE);
        assert!(is_resource_exhaustion(&emfile()));
        let wrapped = std::io::Error::other(Wrapper(emfile()));
        assert_eq!(wrapped.raw_os_error(), None);
        assert!(is_resource_exhaustion(&wrapped));
        let twice = std::io::Error::other(Wrapper(std::io::Error::other(Wrapper(emfile()))));
        assert!(is_resource_exhaustion(&twice));
        let refused = std::io::Error::other(Wrapper(std::io::Error::from(Errno::CONNREFUSED)));
        assert!(!is_resource_exhaustion(&refused));
        assert!(!is_resource_exhaustion(&std::io::Error::other(
            "no such host"
        )));
        assert!(socket_available().is_ok());
    }

    #[test]
    fn the_errno_a_call_leaves_is_its_own() {
        // A stale errno from an earlier call is not reported for the next one.
        let (_, left) = errno_left_by(|| std::fs::File::open("/nonexistent/x").is_err());
        assert_eq!(left, Some(Errno::NOENT.raw_os_error()));
        let (_, left) = errno_left_by(|| 1 + 1);
        assert_eq!(left, None);
    }
}
