//! Answers a GET or HEAD from the file tree under the root: files with validators,
//! conditional and range requests, directories (index.html or a listing), redirects.
//!
//! File metadata and small bodies are read synchronously in the connection's task: on a
//! page-cached file that is a few microseconds, far less than handing each call to a
//! blocking thread. Bodies over [`SMALL_FILE`] are not read at all: the writer is handed
//! the open file and a region, and the kernel copies it to the socket (`sendfile`).

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::request::{self, Request, TargetError};
use crate::net::conn::FileRegion;

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
    pub headers: Vec<(&'static str, String)>,
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

    fn empty(status: u16, headers: Vec<(&'static str, String)>) -> Response {
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

/// Answers `req` (GET or HEAD) from `root`, which must be canonical; `root_dir` is that
/// directory, open.
pub fn respond(root: &Path, root_dir: &File, req: &Request) -> Response {
    let (rel, trailing_slash) = match request::target_path(&req.target) {
        Ok(p) => p,
        Err(TargetError::Bad(why)) => return Response::text(400, Some(why)),
        Err(TargetError::Escape(why)) => return Response::text(404, Some(why)),
    };
    let (file, meta, path) = match open_under(root, root_dir, &rel) {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if meta.is_dir() {
        if !trailing_slash {
            // Relative links in the page only work with the slash: send the client there.
            let (path_part, query) = match req.target.find('?') {
                Some(i) => req.target.split_at(i),
                None => (req.target.as_str(), ""),
            };
            return Response::empty(301, vec![("Location", format!("{path_part}/{query}"))]);
        }
        return match open_under(root, root_dir, &rel.join("index.html")) {
            Ok((index, meta, index_path)) if meta.is_file() => {
                serve_file(index, meta, &index_path, req)
            }
            _ => listing(&path, &req.target),
        };
    }
    serve_file(file, meta, &path, req)
}

/// Opens what `rel` (relative, no `..`: see [`request::target_path`]) names under the
/// root without ever leaving it; returns the file, its metadata and its path (for the
/// content type and listings), or the response that says why not.
///
/// The fast path is one `openat2(RESOLVE_BENEATH)` from the root's descriptor: the kernel
/// follows symlinks but refuses any resolution that leaves the root. Where it cannot
/// decide (an absolute symlink, one that leads out, a kernel without openat2) the slow
/// path resolves every symlink itself and checks where the path ended up.
fn open_under(
    root: &Path,
    root_dir: &File,
    rel: &Path,
) -> Result<(File, fs::Metadata, std::path::PathBuf), Response> {
    let not_opened = |e: io::Error| match e.kind() {
        io::ErrorKind::PermissionDenied => Response::text(403, None),
        _ => Response::text(404, None),
    };
    let (file, path) = match open_beneath(root_dir, rel) {
        Some(opened) => (opened.map_err(not_opened)?, root.join(rel)),
        None => {
            let path = fs::canonicalize(root.join(rel)).map_err(not_opened)?;
            if !request::inside(root, &path) {
                return Err(Response::text(404, Some("a symlink leads out of the root")));
            }
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .map_err(not_opened)?;
            (file, path)
        }
    };
    // Metadata of the file we opened, not of a path, so the two cannot differ.
    let meta = file.metadata().map_err(|_| Response::text(404, None))?;
    Ok((file, meta, path))
}

/// `openat2(root_dir, rel, O_RDONLY | O_NONBLOCK, RESOLVE_BENEATH)`. O_NONBLOCK: a FIFO in
/// the tree must not block the thread in `open` (it is then refused as not a file).
/// `None` when the kernel could not decide and the caller must resolve the path itself.
fn open_beneath(root_dir: &File, rel: &Path) -> Option<io::Result<File>> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c_rel = std::ffi::CString::new(rel.as_os_str().as_bytes()).ok()?;
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and a correctly sized
    // open_how; on success the result is a new descriptor that we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: openat2 just returned this descriptor.
        return Some(Ok(unsafe { File::from_raw_fd(fd as i32) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES | libc::ENAMETOOLONG) => Some(Err(e)),
        // EXDEV (leaves the root, or an absolute symlink), ELOOP, ENOSYS, EPERM (a
        // seccomp filter), EAGAIN, ...: let the slow path decide.
        _ => None,
    }
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
    let mut headers = vec![
        ("Content-Type", content_type(path)),
        ("Last-Modified", httpdate::fmt_http_date(modified)),
        ("ETag", tag.clone()),
        ("Accept-Ranges", "bytes".to_string()),
    ];

    // Conditional requests: If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    if let Some(inm) = req.header("if-none-match") {
        if inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag)
        {
            return Response::empty(304, headers);
        }
    } else if let Some(since) = req
        .header("if-modified-since")
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        if secs(modified) <= secs(since) {
            return Response::empty(304, headers);
        }
    }

    let mut status = 200;
    let (mut start, mut count) = (0, len);
    let range_applies = req.header("if-range").is_none_or(|v| v.trim() == tag);
    if let Some(range) = req.header("range").filter(|_| range_applies) {
        match parse_range(range, len) {
            RangeSpec::Whole => {}
            RangeSpec::Part(s, e) => {
                status = 206;
                (start, count) = (s, e - s + 1);
                headers.push(("Content-Range", format!("bytes {s}-{e}/{len}")));
            }
            RangeSpec::Unsatisfiable => {
                let mut r = Response::text(416, None);
                r.headers.push(("Content-Range", format!("bytes */{len}")));
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

fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT || mime.subtype() == mime_guess::mime::JAVASCRIPT {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
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
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let num = |s: &str| {
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u64>().ok()
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

/// An HTML listing of a directory, every name escaped.
fn listing(dir: &Path, target: &str) -> Response {
    let mut names: Vec<(Vec<u8>, bool)> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().as_bytes().to_vec(),
                    e.file_type().map(|t| t.is_dir()).unwrap_or(false),
                )
            })
            .collect(),
        Err(_) => return Response::text(403, None),
    };
    names.sort();
    let shown_path = target.split('?').next().unwrap_or("/");
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
        assert_eq!(parse_range("bytes=a-b", 100), Whole);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
    }
}
