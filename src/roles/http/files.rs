//! Answers a GET or HEAD from the file tree under the root: files with validators,
//! conditional and range requests, directories (index.html or a listing), redirects.
//!
//! File metadata and small bodies are read synchronously in the connection's task: on a
//! page-cached file that is a few microseconds, far less than handing each call to a
//! blocking thread. Bodies over [`SMALL_FILE`] are not read at all: the writer is handed
//! the open file and a region, and the kernel copies it to the socket (`sendfile`).
//!
//! Containment: every path is looked up beneath the root's descriptor ([`open_beneath`]:
//! `openat2(RESOLVE_BENEATH)`, else [`open_walk`]), and everything after that — metadata,
//! body, listing — uses the descriptor opened, never the path again.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::request::{self, Request, TargetError};
use crate::net::sendfile::FileRegion;

/// Bodies up to this size are read into the response; larger ones are sent from the file.
pub const SMALL_FILE: u64 = 64 * 1024;

/// A response body.
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    File(FileRegion),
}

/// A response before it is serialised.
pub struct Response {
    pub status: u16,
    /// Borrowed where the value is fixed (a type, `bytes`), so most answers allocate
    /// only the values that say something about the file.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Body,
    /// What `Content-Length` says (for HEAD, the length GET would send).
    pub length: u64,
    /// Why, for the log, when the answer is an error worth a line.
    pub note: Option<&'static str>,
}

impl Response {
    /// A short plain-text error or notice.
    pub fn text(status: u16, note: Option<&'static str>) -> Response {
        let body = format!("{} {}\n", status, reason(status)).into_bytes();
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            length: body.len() as u64,
            body: Body::Bytes(body),
            note,
        }
    }

    fn empty(status: u16, headers: Vec<(&'static str, Cow<'static, str>)>) -> Response {
        Response {
            status,
            headers,
            body: Body::Empty,
            length: 0,
            note: None,
        }
    }
}

/// The reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// How a request path is looked up beneath the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// One `openat2(RESOLVE_BENEATH)` from the root's descriptor; the walk only where the
    /// kernel cannot decide (an absolute symlink) or has no `openat2`.
    Kernel,
    /// Always the walk ([`open_walk`]): what a kernel without `openat2` gets; tests
    /// choose it to exercise that path on kernels that have it.
    Walk,
}

/// The served tree: its canonical path and its directory, open. Every lookup starts at
/// `dir`; `path` is only compared with the text of absolute symlinks, never opened.
pub struct Tree<'a> {
    pub path: &'a Path,
    pub dir: &'a File,
    pub lookup: Lookup,
}

/// Answers `req` (GET or HEAD) from the tree.
pub fn respond(tree: &Tree<'_>, req: &Request) -> Response {
    let (rel, trailing_slash) = match request::target_path(&req.target) {
        Ok(p) => p,
        Err(TargetError::Bad(why)) => return Response::text(400, Some(why)),
        Err(TargetError::Escape(why)) => return Response::text(404, Some(why)),
    };
    let (file, meta) = match open_under(tree, &rel) {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if trailing_slash && !meta.is_dir() {
        // `/a.txt/` names a directory that is not there (POSIX: ENOTDIR); serving the
        // file would give it a second URL whose relative links resolve elsewhere.
        return Response::text(404, None);
    }
    if meta.is_dir() {
        if !trailing_slash {
            // Relative links in the page only work with the slash: send the client there,
            // to a path built from the normalised one (never the target as sent).
            let location = request::directory_location(&rel, &req.target);
            return Response::empty(301, vec![("Location", location.into())]);
        }
        // index.html is looked up beneath the root like any path (so it too may be a
        // link within the tree); a listing is read from the directory opened above.
        return match open_under(tree, &rel.join("index.html")) {
            Ok((index, meta)) if meta.is_file() => {
                drop(file);
                serve_file(index, meta, Path::new("index.html"), req)
            }
            Err(r) if r.status == 503 => r,
            _ => listing(file, &rel),
        };
    }
    serve_file(file, meta, &rel, req)
}

/// Opens what `rel` (relative, no `..`: see [`request::target_path`]) names beneath the
/// root, never leaving it; returns the file and its metadata, or the response that says
/// why not. The metadata is the opened file's, so the two cannot differ.
fn open_under(tree: &Tree<'_>, rel: &Path) -> Result<(File, fs::Metadata), Response> {
    let refused = |e: Errno| match e {
        Errno::ACCESS | Errno::PERM => Response::text(403, None),
        // Out of descriptors (or kernel memory) is our state, not the file's: a 404 would
        // be false and cacheable.
        Errno::MFILE | Errno::NFILE | Errno::NOMEM => {
            let mut r = Response::text(503, Some("out of file descriptors"));
            r.headers.push(("Retry-After", "1".into()));
            r.headers.push(("Cache-Control", "no-store".into()));
            r
        }
        Errno::XDEV => Response::text(404, Some("a symlink leads out of the root")),
        _ => Response::text(404, None),
    };
    let file = open_beneath(tree, rel).map_err(refused)?;
    let meta = file.metadata().map_err(|_| Response::text(404, None))?;
    Ok((file, meta))
}

/// Flags of the final open: read-only; `O_NONBLOCK` so a FIFO in the tree cannot block
/// the thread in `open` (it is then refused as not a file).
const OPEN_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Set once `openat2` has been found missing (ENOSYS), so later lookups walk at once.
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens `rel` beneath the tree's directory. With [`Lookup::Kernel`]: `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so the kernel follows symlinks but refuses
/// any resolution that leaves the root. When it refuses with EXDEV (an absolute symlink,
/// or a link that leads out) the walk decides; so it does when the kernel has no
/// `openat2`, or a seccomp filter forbids it, or a rename elsewhere kept making it retry.
/// Both stay relative to the root's descriptor: nothing is ever opened by path.
fn open_beneath(tree: &Tree<'_>, rel: &Path) -> Result<File, Errno> {
    use std::sync::atomic::Ordering::Relaxed;
    if tree.lookup == Lookup::Kernel && !NO_OPENAT2.load(Relaxed) {
        for _ in 0..3 {
            match openat2_beneath(tree.dir, rel) {
                Ok(file) => return Ok(file),
                // A rename somewhere raced the lookup (RESOLVE_BENEATH): try again.
                Err(Errno::AGAIN) => continue,
                Err(Errno::XDEV) => break,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Relaxed);
                    break;
                }
                Err(Errno::PERM) => break,
                Err(e) => return Err(e),
            }
        }
    }
    open_walk(tree, rel)
}

/// A name as the kernel takes it. One holding a NUL byte can name no file: ENOENT, never
/// the EINVAL rustix would give for it, which the walk would read as "not a link".
fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::NOENT)
}

/// `openat2(dir, rel, OPEN_FLAGS, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn openat2_beneath(dir: &File, rel: &Path) -> Result<File, Errno> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c_rel = cstring(rel.as_os_str().as_bytes())?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(dir, c_rel.as_c_str(), OPEN_FLAGS, Mode::empty(), resolve).map(File::from)
}

/// `openat(dir, name, flags)`, retried on EINTR.
fn openat(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let c_name = cstring(name)?;
    rustix::io::retry_on_intr(|| rustix::fs::openat(dir, c_name.as_c_str(), flags, Mode::empty()))
}

/// `readlinkat(dir, name)`: the link's text (EINVAL when `name` is not a link).
fn readlinkat(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let c_name = cstring(name)?;
    rustix::fs::readlinkat(dir, c_name.as_c_str(), Vec::new()).map(CString::into_bytes)
}

/// The most symlinks one lookup follows (the kernel's own limit): more is a loop.
const MAX_LINKS: usize = 40;

/// Opens `rel` beneath the root by walking it one component at a time, each with
/// `openat(O_NOFOLLOW)` relative to the directory opened before it, starting at the
/// root's descriptor. A symlink met on the way is read (`readlinkat`, relative to the
/// same directory) and its text walked in turn: a relative one from the directory that
/// holds it, an absolute one from the root — but only when its text names a place
/// inside the root (it begins with the root's canonical path, compared component by
/// component with `//` and `/./` collapsed: [`beneath_root`]); any other absolute
/// link, and a `..` that would climb above the root, is refused with EXDEV. A name
/// swapped for a link between two steps is only ever opened without following it, so
/// whatever it points at is resolved by this same walk, beneath the root.
pub fn open_walk(tree: &Tree<'_>, rel: &Path) -> Result<File, Errno> {
    let leaves = || Errno::XDEV;
    let too_many = || Errno::LOOP;
    // Directories entered below the root (the root itself is tree.dir).
    let mut dirs: Vec<OwnedFd> = Vec::new();
    // Components still to walk, the next one last.
    let mut todo: Vec<Vec<u8>> = rel.iter().rev().map(|c| c.as_bytes().to_vec()).collect();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        let here = dirs.last().map_or(tree.dir.as_fd(), |d| d.as_fd());
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                dirs.pop().ok_or_else(leaves)?;
                continue;
            }
            _ => {}
        }
        let last = todo.is_empty();
        let flags = if last {
            OPEN_FLAGS | OFlags::NOFOLLOW
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let refused = match openat(here, &name, flags) {
            Ok(fd) if last => return Ok(File::from(fd)),
            Ok(fd) => {
                dirs.push(fd);
                continue;
            }
            Err(e) => e,
        };
        // A link refuses O_NOFOLLOW with ELOOP (a last component) or ENOTDIR (one that
        // must be a directory); so does, for ENOTDIR, a plain file.
        if !matches!(refused, Errno::LOOP | Errno::NOTDIR) {
            return Err(refused);
        }
        let target = match readlinkat(here, &name) {
            Ok(target) => target,
            // Not a link (any more): a file where a directory was needed, or a name
            // swapped back since the open; look again, within the link budget.
            Err(Errno::INVAL) => {
                if refused == Errno::NOTDIR {
                    return Err(refused);
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(too_many());
                }
                todo.push(name);
                continue;
            }
            Err(e) => return Err(e),
        };
        links += 1;
        if links > MAX_LINKS {
            return Err(too_many());
        }
        if target.starts_with(b"/") {
            // Only an absolute link that names a place inside the root is followed, and
            // then from the root's descriptor: its text is compared, never opened.
            let inside = beneath_root(tree.path, &target).ok_or_else(leaves)?;
            dirs.clear();
            todo.extend(inside.into_iter().rev().map(<[u8]>::to_vec));
        } else {
            todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
        }
    }
    // Everything walked was a directory (or `.`/`..`): open the one we are in.
    let here = dirs.last().map_or(tree.dir.as_fd(), |d| d.as_fd());
    openat(here, b".", OPEN_FLAGS).map(File::from)
}

/// The components of an absolute link's text after the root's canonical path, or `None`
/// when the text does not begin with it. The comparison is by component, and only
/// empty and `.` components are dropped on the way (`/root//site/./a` is `/root/site/a`
/// whatever the links along it); a `..` among the root's components never matches,
/// since where it leads depends on links. What follows the root is returned as written
/// and walked from the root's descriptor (where a `..` that climbs above it is refused).
fn beneath_root<'t>(root: &Path, text: &'t [u8]) -> Option<Vec<&'t [u8]>> {
    let mut parts = text
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".");
    // (The first component of a canonical root is "/" itself.)
    for want in root.iter().skip(1) {
        if parts.next()? != want.as_bytes() {
            return None;
        }
    }
    Some(parts.collect())
}

/// The `ETag` of a file: size and modification time, which change when it does.
fn etag(meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    )
}

fn serve_file(file: File, meta: fs::Metadata, path: &Path, req: &Request) -> Response {
    if !meta.is_file() {
        return Response::text(404, None);
    }
    let len = meta.len();
    let tag = etag(&meta);
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);

    // Conditional requests: If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    // Every copy of If-None-Match counts: copies of a list field are one list.
    let not_modified = if req.header_count("if-none-match") > 0 {
        req.list_members("if-none-match")
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
    } else if let Some(since) = req
        .header("if-modified-since")
        .and_then(|v| httpdate::parse_http_date(v).ok())
        // A date in the future is invalid (RFC 9110 13.1.3): ignore it.
        .filter(|&since| since <= SystemTime::now())
    {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        secs(modified) <= secs(since)
    } else {
        false
    };
    // Range and If-Range are singletons: sent twice, the range is ignored (the whole
    // file is sent), never read as its first copy.
    let range_applies = match req.header_count("if-range") {
        0 => true,
        1 => req.header("if-range").is_some_and(|v| v.trim() == tag),
        _ => false,
    };

    let mut headers = Vec::with_capacity(5);
    headers.extend([
        ("Content-Type", content_type(path)),
        ("Last-Modified", http_date_of(modified).into()),
        ("ETag", tag.into()),
        ("Accept-Ranges", "bytes".into()),
    ]);
    if not_modified {
        return Response::empty(304, headers);
    }

    let mut status = 200;
    let (mut start, mut count) = (0, len);
    if let Some(range) = req.single_header("range").filter(|_| range_applies) {
        match parse_range(range, len) {
            RangeSpec::Whole => {}
            RangeSpec::Part(s, e) => {
                status = 206;
                (start, count) = (s, e - s + 1);
                headers.push(("Content-Range", format!("bytes {s}-{e}/{len}").into()));
            }
            RangeSpec::Unsatisfiable => {
                let mut r = Response::text(416, None);
                r.headers
                    .push(("Content-Range", format!("bytes */{len}").into()));
                return r;
            }
        }
    }

    let body = if req.method == "HEAD" || count == 0 {
        Body::Empty
    } else if count <= SMALL_FILE {
        let mut buf = vec![0u8; count as usize];
        match file.read_exact_at(&mut buf, start) {
            Ok(()) => Body::Bytes(buf),
            // Shrunk or unreadable since we looked: say so rather than send a wrong body.
            Err(_) => return Response::text(500, Some("the file could not be read")),
        }
    } else {
        Body::File(FileRegion {
            file: Arc::new(file),
            offset: start,
            len: count,
        })
    };
    Response {
        status,
        headers,
        body,
        length: count,
        note: None,
    }
}

/// The `Content-Type` for a path, by its extension: the type as the table gives it, and
/// for text (and JavaScript) with `; charset=utf-8`.
fn content_type(path: &Path) -> Cow<'static, str> {
    thread_local! {
        /// Text types with their charset, made once per type and thread and kept for
        /// good: at most one per text type in the table, so the memory is bounded.
        static WITH_CHARSET: RefCell<HashMap<&'static str, &'static str>> =
            RefCell::new(HashMap::new());
    }
    let guess = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => mime_guess::from_ext(ext).first_raw(),
        None => None,
    };
    let mime = guess.unwrap_or("application/octet-stream");
    if !(mime.starts_with("text/") || mime.ends_with("/javascript")) {
        return Cow::Borrowed(mime);
    }
    WITH_CHARSET.with(|cache| {
        let made = *cache
            .borrow_mut()
            .entry(mime)
            .or_insert_with(|| Box::leak(format!("{mime}; charset=utf-8").into_boxed_str()));
        Cow::Borrowed(made)
    })
}

/// The last second an HTTP date can name (9999-12-31 23:59:59): `httpdate` panics past
/// it, and before 1970.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// `t` as an IMF-fixdate, for `Last-Modified`: formatted once per thread for the last
/// second asked, which for a file served again and again is its modification time. A
/// time outside what the format can say (a file touched to 1960, or to year 10000) is
/// given as the nearest it can: a panic there once took down the thread that served it.
fn http_date_of(t: SystemTime) -> String {
    thread_local! {
        static LAST: RefCell<Option<(u64, String)>> = const { RefCell::new(None) };
    }
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(LAST_HTTP_DATE);
    let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((at, text)) if *at == secs => text.clone(),
            _ => {
                let text = httpdate::fmt_http_date(t);
                *last = Some((secs, text.clone()));
                text
            }
        }
    })
}

/// What a `Range` header asks of a file (public for the fuzz oracles).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable range: send the whole file (also for several ranges, which RFC 9110 allows).
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads a `Range` header value against a file of `len` bytes.
///
/// Numbers are digits only; one too large for a `u64` is simply larger than any file
/// (`bytes=99999999999999999999999-` starts past the end: 416; a suffix that long is
/// the whole file: 206).
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    // The unit is case-insensitive (RFC 9110 14.1): `Bytes=0-1` is a range too.
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &value[6..])
    else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let num = |s: &str| {
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            Some(s.parse::<u64>().unwrap_or(u64::MAX))
        } else {
            None
        }
    };
    match (a.trim(), b.trim()) {
        ("", "") => RangeSpec::Whole,
        ("", suffix) => match num(suffix) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if len > 0 => RangeSpec::Part(len.saturating_sub(n), len - 1),
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Whole,
        },
        (first, last) => {
            let Some(first) = num(first) else {
                return RangeSpec::Whole;
            };
            let last = if last.is_empty() {
                Some(u64::MAX)
            } else {
                num(last)
            };
            match last {
                None => RangeSpec::Whole,
                Some(last) if last < first => RangeSpec::Whole, // invalid: ignored, per RFC 9110
                Some(_) if first >= len => RangeSpec::Unsatisfiable,
                Some(last) => RangeSpec::Part(first, last.min(len - 1)),
            }
        }
    }
}

/// The names in an open directory, each with whether it is a directory (a symlink is
/// not), read from that descriptor (`getdents64` on it), so what is listed is what was
/// opened.
fn read_dir_fd(dir: File) -> Result<Vec<(Vec<u8>, bool)>, Errno> {
    let mut dir = Dir::new(OwnedFd::from(dir))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            // Some file systems do not say: ask, relative to the same directory.
            FileType::Unknown => {
                rustix::fs::statat(dir.fd()?, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            }
            _ => false,
        };
        names.push((name.to_vec(), is_dir));
    }
    Ok(names)
}

/// An HTML listing of an open directory (`rel` is its normalised path), every name
/// escaped.
fn listing(dir: File, rel: &Path) -> Response {
    let mut names = match read_dir_fd(dir) {
        Ok(names) => names,
        Err(_) => return Response::text(403, None),
    };
    names.sort();
    let shown_path = request::directory_location(rel, "/");
    let title = request::html_escape(&String::from_utf8_lossy(shown_path.as_bytes()));
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if shown_path != "/" {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, is_dir) in names {
        let slash = if is_dir { "/" } else { "" };
        let href = request::percent_encode(&name);
        let text = request::html_escape(&String::from_utf8_lossy(&name));
        html.push_str(&format!(
            "<li><a href=\"{href}{slash}\">{text}{slash}</a></li>\n"
        ));
    }
    html.push_str("</ul></body></html>\n");
    let body = html.into_bytes();
    Response {
        status: 200,
        headers: vec![("Content-Type", "text/html; charset=utf-8".into())],
        length: body.len() as u64,
        body: Body::Bytes(body),
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_the_tables_with_a_charset_for_text() {
        // The parsed-Mime way this replaced, as the oracle.
        let parsed = |path: &Path| {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            if mime.type_() == mime_guess::mime::TEXT
                || mime.subtype() == mime_guess::mime::JAVASCRIPT
            {
                format!("{mime}; charset=utf-8")
            } else {
                mime.to_string()
            }
        };
        for name in [
            "a.html",
            "A.HTM",
            "a.txt",
            "a.css",
            "a.js",
            "a.mjs",
            "a.json",
            "a.svg",
            "a.png",
            "a.JPG",
            "a.bin",
            "a.tar.gz",
            "a.wasm",
            "a.xml",
            "a.csv",
            "a.md",
            "noext",
            ".hidden",
            "a.",
            "a.unknownext",
        ] {
            let path = Path::new(name);
            // Twice: the second from the cache.
            assert_eq!(content_type(path), parsed(path), "{name}");
            assert_eq!(content_type(path), parsed(path), "{name}");
        }
        assert_eq!(
            content_type(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
    }

    #[test]
    fn last_modified_dates_are_formatted_for_each_second() {
        use std::time::Duration;
        for secs in [0, 1, 1_000_000_000, 1_000_000_000, 1_700_000_000] {
            let t = UNIX_EPOCH + Duration::new(secs, 123);
            assert_eq!(http_date_of(t), httpdate::fmt_http_date(t));
        }
        // Outside what the format can say: the nearest it can, not a panic.
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(http_date_of(before), "Thu, 01 Jan 1970 00:00:00 GMT");
        let after = UNIX_EPOCH + Duration::from_secs(LAST_HTTP_DATE + 86_400);
        assert_eq!(http_date_of(after), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=9-1", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("Bytes=0-1", 100), Part(0, 1));
        assert_eq!(parse_range(" BYTES=-2", 100), Part(98, 99));
        assert_eq!(parse_range("byte=0-1", 100), Whole);
        assert_eq!(parse_range("bytés=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=a-b", 100), Whole);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        // Numbers too large for a u64 are larger than any file, not garbage.
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 100),
            Part(0, 99)
        );
        assert_eq!(
            parse_range("bytes=5-99999999999999999999999", 100),
            Part(5, 99)
        );
        assert_eq!(parse_range("bytes=-", 100), Whole);
        assert_eq!(parse_range("bytes=1-2-3", 100), Whole);
    }

    /// A tree for the lookup tests: `root/` with files, links and a loop; `out/` and
    /// `secret` beside it.
    struct TempTree(std::path::PathBuf);

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_tree(tag: &str) -> (TempTree, std::path::PathBuf) {
        use std::os::unix::fs::symlink;
        let dir =
            std::env::temp_dir().join(format!("switchboard-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("root");
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::create_dir_all(dir.join("out")).unwrap();
        fs::write(dir.join("secret"), "SECRET").unwrap();
        fs::write(dir.join("out/f"), "OUTSIDE").unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::write(root.join("d/e/f.txt"), "f").unwrap();
        let root = fs::canonicalize(&root).unwrap();
        symlink("a.txt", root.join("rel")).unwrap();
        symlink("d/../a.txt", root.join("reldots")).unwrap();
        symlink(root.join("d/e/f.txt"), root.join("abs")).unwrap();
        symlink(root.join("d"), root.join("absdir")).unwrap();
        symlink(format!("{}/", root.display()), root.join("absroot")).unwrap();
        symlink("../../a.txt", root.join("d/e/up2")).unwrap();
        symlink("e/..", root.join("d/dotdot")).unwrap();
        symlink(dir.join("secret"), root.join("out-abs")).unwrap();
        symlink("../secret", root.join("out-rel")).unwrap();
        symlink(dir.join("out"), root.join("out-dir")).unwrap();
        symlink("../../../secret", root.join("d/e/out-deep")).unwrap();
        symlink(format!("{}-x/a", root.display()), root.join("prefix-trick")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
        (TempTree(dir), root)
    }

    fn read(f: Result<File, Errno>) -> Result<String, Errno> {
        use std::io::Read;
        let mut f = f?;
        if f.metadata().unwrap().is_dir() {
            return Ok("<dir>".into());
        }
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        Ok(s)
    }

    #[test]
    fn both_lookups_stay_beneath_the_root_and_agree() {
        let (_guard, root) = temp_tree("lookup");
        let dir = File::open(&root).unwrap();
        let cases: &[(&str, Result<&str, Errno>)] = &[
            ("", Ok("<dir>")),
            ("a.txt", Ok("a")),
            ("d/e/f.txt", Ok("f")),
            ("d", Ok("<dir>")),
            ("rel", Ok("a")),
            ("reldots", Ok("a")),
            ("abs", Ok("f")),
            ("absdir/e/f.txt", Ok("f")),
            ("absdir", Ok("<dir>")),
            ("absroot/a.txt", Ok("a")),
            ("d/e/up2", Ok("a")),
            ("d/dotdot/e/f.txt", Ok("f")),
            ("out-abs", Err(Errno::XDEV)),
            ("out-rel", Err(Errno::XDEV)),
            ("out-dir/f", Err(Errno::XDEV)),
            ("d/e/out-deep", Err(Errno::XDEV)),
            ("prefix-trick", Err(Errno::XDEV)),
            ("magic", Err(Errno::XDEV)),
            ("loop1", Err(Errno::LOOP)),
            ("nope", Err(Errno::NOENT)),
            ("a.txt/x", Err(Errno::NOTDIR)),
        ];
        for lookup in [Lookup::Kernel, Lookup::Walk] {
            let tree = Tree {
                path: &root,
                dir: &dir,
                lookup,
            };
            for (rel, want) in cases {
                let got = read(open_beneath(&tree, Path::new(rel)));
                assert_eq!(got.as_deref().map_err(|e| *e), *want, "{lookup:?} {rel}");
            }
        }
    }

    #[test]
    fn absolute_link_text_is_compared_with_the_root_by_component() {
        fn rest(t: &'static str) -> Option<Vec<&'static [u8]>> {
            beneath_root(Path::new("/srv/site"), t.as_bytes())
        }
        let parts = |v: &[&'static str]| Some(v.iter().map(|s| s.as_bytes()).collect());
        assert_eq!(rest("/srv/site/a.txt"), parts(&["a.txt"]));
        assert_eq!(rest("/srv//site/./a.txt"), parts(&["a.txt"]));
        assert_eq!(rest("//srv/site"), parts(&[]));
        assert_eq!(rest("/srv/site/"), parts(&[]));
        assert_eq!(rest("/./srv/./site//d/../a"), parts(&["d", "..", "a"]));
        assert_eq!(rest("/srv/../srv/site/a"), None);
        assert_eq!(rest("/srv/site/../site/a"), parts(&["..", "site", "a"]));
        assert_eq!(rest("/srv/sitex/a"), None);
        assert_eq!(rest("/srv"), None);
        assert_eq!(rest("/etc/passwd"), None);
        assert_eq!(beneath_root(Path::new("/"), b"/x//y"), parts(&["x", "y"]));
    }

    #[test]
    fn absolute_links_spelled_with_empty_and_dot_components_are_followed() {
        use std::os::unix::fs::symlink;
        let (_guard, root) = temp_tree("spelled");
        let text = root.to_str().unwrap();
        symlink(format!("{text}//a.txt"), root.join("s1")).unwrap();
        symlink(
            text.replacen('/', "//", 2) + "/./d/e/f.txt",
            root.join("s2"),
        )
        .unwrap();
        symlink(format!("{text}/d/../a.txt"), root.join("s3")).unwrap();
        symlink(format!("{text}/../root/a.txt"), root.join("s4")).unwrap();
        let dir = File::open(&root).unwrap();
        for lookup in [Lookup::Kernel, Lookup::Walk] {
            let tree = Tree {
                path: &root,
                dir: &dir,
                lookup,
            };
            let got = |rel: &str| read(open_beneath(&tree, Path::new(rel)));
            assert_eq!(got("s1"), Ok("a".into()), "{lookup:?}");
            assert_eq!(got("s2"), Ok("f".into()), "{lookup:?}");
            // After the root, `..` is walked by descriptor, as in a relative link.
            assert_eq!(got("s3"), Ok("a".into()), "{lookup:?}");
            // Within the root's own path, `..` is never resolved by text.
            assert_eq!(got("s4"), Err(Errno::XDEV), "{lookup:?}");
        }
    }

    #[test]
    fn a_listing_is_read_from_the_open_directory() {
        let (_guard, root) = temp_tree("listing");
        let d = File::open(root.join("d")).unwrap();
        // The name now leads elsewhere; the open directory is what is listed.
        fs::rename(root.join("d"), root.join("moved")).unwrap();
        std::os::unix::fs::symlink(root.join("../out"), root.join("d")).unwrap();
        let mut names = read_dir_fd(d).unwrap();
        names.sort();
        assert_eq!(
            names,
            vec![(b"dotdot".to_vec(), false), (b"e".to_vec(), true)]
        );
    }
}
