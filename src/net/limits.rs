//! Process limits: the open-files limit a server raises at start.

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// Each connection costs one descriptor (two for a proxy session), and the default soft
/// limit (often 1024) is far below what a server is allowed.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = wanted;
        }
    }
    Ok(lim.rlim_cur)
}

/// Errors that mean "this process or the system is out of something" (descriptors,
/// buffers, memory), not "that peer failed": the caller waits and retries, and blames
/// no client or upstream.
pub fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
