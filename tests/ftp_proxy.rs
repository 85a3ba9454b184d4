//! `proxy --ftp` with a real FTP server (vsftpd, started here on a free port) and real
//! clients (curl, lftp), and with a scripted server for the faults a real one does not
//! make. vsftpd's passive replies name 192.0.2.1 (TEST-NET, unreachable), so a client
//! that took the reply's address would fail: the proxy must use the upstream's peer
//! address. Without vsftpd (and root, and its `ftp` user), curl or lftp, a test says
//! "SKIPPED: ..." on stderr and returns.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

const BIG: usize = 32 << 20;

/// Whether `programs` are all installed; if not, says which test did not run.
fn have(test: &str, programs: &[&str]) -> bool {
    for p in programs {
        let found = Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            eprintln!("SKIPPED: {p} is not installed; {test} did not run");
            return false;
        }
    }
    true
}

/// A vsftpd on a free port, anonymous, with uploads into `pub/`; killed when dropped.
struct Vsftpd {
    child: Child,
    addr: SocketAddr,
    root: PathBuf,
    dir: PathBuf,
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const VSFTPD: &str = "/usr/sbin/vsftpd";

fn vsftpd(test: &str) -> Option<Vsftpd> {
    if !Path::new(VSFTPD).exists() {
        eprintln!("SKIPPED: vsftpd is not installed; {test} did not run");
        return None;
    }
    // vsftpd runs its anonymous sessions as the `ftp` user, and must start as root.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if unsafe { libc::geteuid() } != 0 || !passwd.lines().any(|l| l.starts_with("ftp:")) {
        eprintln!("SKIPPED: vsftpd needs root and an `ftp` user; {test} did not run");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("switchboard-ftp-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (root, empty) = (dir.join("root"), dir.join("empty"));
    std::fs::create_dir_all(root.join("pub")).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (d, mode) in [(&dir, 0o755), (&root, 0o755), (&root.join("pub"), 0o777)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // A free port: bound, noted, let go (vsftpd binds it a moment later).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
         background=NO\nanonymous_enable=YES\nlocal_enable=NO\nno_anon_password=YES\n\
         ftp_username=ftp\nwrite_enable=YES\nanon_upload_enable=YES\nanon_umask=022\n\
         anon_root={}\npasv_enable=YES\npasv_min_port=20000\npasv_max_port=60000\n\
         pasv_address=192.0.2.1\nport_enable=YES\nconnect_from_port_20=NO\n\
         seccomp_sandbox=NO\nsecure_chroot_dir={}\nmax_clients=200\nmax_per_ip=200\n\
         xferlog_enable=NO\n",
        root.display(),
        empty.display()
    );
    let conf_path = dir.join("vsftpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(VSFTPD)
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = Vsftpd {
        child,
        addr,
        root,
        dir,
    };
    wait_until("vsftpd to greet", || {
        TcpStream::connect(addr).is_ok_and(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("220")
        })
    });
    Some(server)
}

/// The proxy binary with `--ftp` in front of `upstream`, and its log.
struct FtpProxy {
    _proc: Proc,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

fn ftp_proxy(upstream: SocketAddr, extra: &[&str]) -> FtpProxy {
    let up = upstream.to_string();
    let mut args = vec![
        "proxy",
        "--ftp",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
    ];
    args.extend_from_slice(extra);
    let mut proc = spawn(&args);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            keep.lock().unwrap().push(strip_ansi(&line));
        }
    });
    FtpProxy {
        _proc: proc,
        addr,
        log: lines,
    }
}

impl FtpProxy {
    /// Every "session closed" record so far, its indented field lines joined.
    fn sessions(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        let mut out = Vec::new();
        for (i, l) in log.iter().enumerate() {
            if l.contains("session closed") {
                let mut text = l.clone();
                for f in log[i + 1..].iter().take_while(|l| l.starts_with(' ')) {
                    text.push('\n');
                    text.push_str(f);
                }
                out.push(text);
            }
        }
        out
    }

    /// Waits for `n` session lines; returns them.
    fn wait_sessions(&self, n: usize) -> Vec<String> {
        // A record's field lines follow its first line: wait for the next record too,
        // or a moment's quiet, by waiting until the last has all its fields.
        wait_until("the session lines", || {
            let s = self.sessions();
            s.len() >= n && s.iter().all(|r| r.contains("ftp_data_bytes_down"))
        });
        self.sessions()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// The number after `key ` in a record.
fn field(record: &str, key: &str) -> Option<u64> {
    record.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// Runs curl with `args`; panics with its stderr unless it succeeds.
fn curl(args: &[&str]) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(len);
    std::fs::write(path, &data).unwrap();
    data
}

fn assert_same(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap();
    assert_eq!(
        got.len(),
        want.len(),
        "{} has the wrong length",
        path.display()
    );
    assert!(got == want, "{} differs", path.display());
}

/// curl's modes: passive with PASV (and the reply's address taken at its word, so only
/// the proxy's rewriting can make it work), passive with EPSV, active with PORT and
/// with EPRT.
const PASV: &[&str] = &["--ftp-pasv", "--disable-epsv", "--no-ftp-skip-pasv-ip"];
const EPSV: &[&str] = &["--ftp-pasv"];
const PORT: &[&str] = &["--ftp-port", "127.0.0.1", "--disable-eprt"];
const EPRT: &[&str] = &["--ftp-port", "127.0.0.1"];

/// Downloads and uploads a random 32 MiB file through the proxy in `mode`; both arrive
/// byte for byte, and the session lines count one data channel each.
fn big_both_ways(test: &str, mode: &[&str]) {
    if !have(test, &["curl"]) {
        return;
    }
    let Some(ftp) = vsftpd(test) else { return };
    let proxy = ftp_proxy(ftp.addr, &[]);
    let data = random_file(&ftp.root.join("big.bin"), BIG, 17);
    let got = ftp.dir.join("got.bin");
    let url = format!("ftp://{}/big.bin", proxy.addr);
    let mut args = mode.to_vec();
    args.extend_from_slice(&[&url, "-o", got.to_str().unwrap()]);
    curl(&args);
    assert_same(&got, &data);

    let up_url = format!("ftp://{}/pub/up.bin", proxy.addr);
    let mut args = mode.to_vec();
    args.extend_from_slice(&["-T", got.to_str().unwrap(), &up_url]);
    curl(&args);
    assert_same(&ftp.root.join("pub/up.bin"), &data);

    let sessions = proxy.wait_sessions(2);
    let (down, up) = (&sessions[0], &sessions[1]);
    assert_eq!(field(down, "ftp_data"), Some(1), "{down}");
    assert_eq!(
        field(down, "ftp_data_bytes_down"),
        Some(BIG as u64),
        "{down}"
    );
    assert_eq!(field(up, "ftp_data"), Some(1), "{up}");
    assert_eq!(field(up, "ftp_data_bytes_up"), Some(BIG as u64), "{up}");
}

#[test]
fn pasv_carries_32_mib_both_ways() {
    big_both_ways("pasv_carries_32_mib_both_ways", PASV);
}

#[test]
fn epsv_carries_32_mib_both_ways() {
    big_both_ways("epsv_carries_32_mib_both_ways", EPSV);
}

#[test]
fn port_carries_32_mib_both_ways() {
    big_both_ways("port_carries_32_mib_both_ways", PORT);
}

#[test]
fn eprt_carries_32_mib_both_ways() {
    big_both_ways("eprt_carries_32_mib_both_ways", EPRT);
}

#[test]
fn twenty_transfers_in_parallel() {
    let test = "twenty_transfers_in_parallel";
    if !have(test, &["curl"]) {
        return;
    }
    let Some(ftp) = vsftpd(test) else { return };
    let proxy = ftp_proxy(ftp.addr, &[]);
    let data = Arc::new(random_file(&ftp.root.join("f.bin"), 32 << 20, 3));
    let src = ftp.dir.join("src.bin");
    std::fs::write(&src, &*data).unwrap();
    let modes = [PASV, EPSV, PORT, EPRT];
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (addr, dir, root, data, src) = (
                proxy.addr,
                ftp.dir.clone(),
                ftp.root.clone(),
                data.clone(),
                src.clone(),
            );
            let mode = modes[i % 4];
            thread::spawn(move || {
                if i % 2 == 0 {
                    let got = dir.join(format!("got{i}.bin"));
                    let mut args = mode.to_vec();
                    let url = format!("ftp://{addr}/f.bin");
                    args.extend_from_slice(&[&url, "-o", got.to_str().unwrap()]);
                    curl(&args);
                    assert_same(&got, &data);
                } else {
                    let url = format!("ftp://{addr}/pub/up{i}.bin");
                    let mut args = mode.to_vec();
                    args.extend_from_slice(&["-T", src.to_str().unwrap(), &url]);
                    curl(&args);
                    assert_same(&root.join(format!("pub/up{i}.bin")), &data);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let sessions = proxy.wait_sessions(20);
    let moved: u64 = sessions
        .iter()
        .map(|s| field(s, "ftp_data_bytes_up").unwrap() + field(s, "ftp_data_bytes_down").unwrap())
        .sum();
    assert_eq!(moved, 20 * (32 << 20));
}

/// lftp, passive and active, get and put.
#[test]
fn lftp_gets_and_puts_passive_and_active() {
    let test = "lftp_gets_and_puts_passive_and_active";
    if !have(test, &["lftp"]) {
        return;
    }
    let Some(ftp) = vsftpd(test) else { return };
    let proxy = ftp_proxy(ftp.addr, &[]);
    let data = random_file(&ftp.root.join("l.bin"), 4 << 20, 5);
    for passive in ["on", "off"] {
        let got = ftp.dir.join(format!("lgot-{passive}.bin"));
        let script = format!(
            "set ftp:passive-mode {passive}; set ftp:ignore-pasv-address no; \
             set net:max-retries 1; set net:timeout 20; \
             get l.bin -o {}; put {} -o pub/l-{passive}.bin; bye",
            got.display(),
            got.display()
        );
        let out = Command::new("lftp")
            .args(["-u", "anonymous,x", "-e", &script])
            .arg(format!("ftp://{}", proxy.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lftp passive {passive}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same(&got, &data);
        assert_same(&ftp.root.join(format!("pub/l-{passive}.bin")), &data);
    }
}

/// A raw control client: sends lines, reads replies.
struct Control {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Control {
    fn connect(addr: SocketAddr) -> Control {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Control { stream, reader }
    }

    fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).unwrap();
    }

    /// The next line, with its end.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    /// Reads lines until one starts with `code `; returns it.
    fn reply(&mut self, code: &str) -> String {
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "closed before {code}");
            if line.starts_with(&format!("{code} ")) {
                return line;
            }
            assert!(
                line.starts_with(&format!("{code}-")) || !line.starts_with(char::is_numeric),
                "wanted {code}, got {line:?}"
            );
        }
    }
}

/// The address a `227` names.
fn addr_227(line: &str) -> SocketAddr {
    let open = line.find('(').unwrap();
    let close = line.find(')').unwrap();
    let n: Vec<u16> = line[open + 1..close]
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    format!("{}.{}.{}.{}:{}", n[0], n[1], n[2], n[3], n[4] << 8 | n[5])
        .parse()
        .unwrap()
}

#[test]
fn a_client_quitting_mid_transfer_closes_its_data_channel() {
    let test = "a_client_quitting_mid_transfer_closes_its_data_channel";
    let Some(ftp) = vsftpd(test) else { return };
    let proxy = ftp_proxy(ftp.addr, &[]);
    random_file(&ftp.root.join("big.bin"), BIG, 9);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("USER anonymous\r\n");
    c.reply("230");
    c.send("TYPE I\r\n");
    c.reply("200");
    c.send("PASV\r\n");
    let pasv = c.reply("227");
    let mut data = TcpStream::connect(addr_227(&pasv)).unwrap();
    c.send("RETR big.bin\r\n");
    c.reply("150");
    let mut some = vec![0; 1 << 20];
    data.read_exact(&mut some).unwrap();
    // Gone mid-transfer, as a killed client is: both connections closed, the data
    // one with bytes unread (a reset).
    drop(c);
    drop(data);
    let sessions = proxy.wait_sessions(1);
    let s = &sessions[0];
    assert_eq!(field(s, "ftp_data"), Some(1), "{s}");
    assert!(field(s, "ftp_data_bytes_down").unwrap() < BIG as u64, "{s}");
    // And the proxy serves the next client.
    let got = ftp.dir.join("after.bin");
    if have(test, &["curl"]) {
        let url = format!("ftp://{}/big.bin", proxy.addr);
        curl(&[&url, "-o", got.to_str().unwrap()]);
        assert_eq!(std::fs::metadata(&got).unwrap().len(), BIG as u64);
    }
}

// ------------------------------------------------------------------------------------
// A scripted server, for faults.

/// A one-client FTP server run by `script` on a thread: it gets the accepted control
/// stream. Returns its address.
fn scripted(script: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        script(s);
    });
    addr
}

/// Reads one line from a scripted server's control stream.
fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// A `227` naming 192.0.2.1 and `port`.
fn reply_227(port: u16) -> String {
    format!(
        "227 Entering Passive Mode (192,0,2,1,{},{}).\r\n",
        port >> 8,
        port & 0xff
    )
}

#[test]
fn a_multi_line_227_split_across_reads_to_lower_case_pasv_with_bare_newlines() {
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = data.local_addr().unwrap().port();
    let server = scripted(move |mut s| {
        s.write_all(b"220 hi\n").unwrap();
        assert_eq!(read_line(&mut s), "pasv\n");
        // Split in the middle of the lines; a continuation line that looks like an
        // address, which must pass untouched.
        let reply = format!(
            "227-first (10,0,0,1,1,1)\n227-second\n{}",
            reply_227(port).replace("\r\n", "\n")
        );
        for piece in reply.as_bytes().chunks(7) {
            s.write_all(piece).unwrap();
            s.flush().unwrap();
            thread::sleep(Duration::from_millis(5));
        }
        let (mut d, _) = data.accept().unwrap();
        d.write_all(b"the data").unwrap();
        drop(d);
        assert_eq!(read_line(&mut s), "quit\n");
        s.write_all(b"221 bye\n").unwrap();
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    assert_eq!(c.line(), "220 hi\n");
    c.send("pasv\n");
    assert_eq!(c.line(), "227-first (10,0,0,1,1,1)\n");
    assert_eq!(c.line(), "227-second\n");
    let last = c.line();
    assert!(
        last.ends_with(").\n") && !last.contains("192,0,2,1"),
        "{last:?}"
    );
    let mut d = TcpStream::connect(addr_227(&last)).unwrap();
    assert_eq!(read_to_end(&mut d), b"the data");
    c.send("quit\n");
    assert_eq!(c.line(), "221 bye\n");
    drop(c);
    let s = &proxy.wait_sessions(1)[0];
    assert_eq!(field(s, "ftp_data_bytes_down"), Some(8), "{s}");
}

#[test]
fn a_malformed_227_is_answered_425_and_an_unasked_227_passes_untouched() {
    let server = scripted(|mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        assert_eq!(read_line(&mut s), "PASV\r\n");
        s.write_all(b"227 Entering Passive Mode (1,2,3).\r\n")
            .unwrap();
        assert_eq!(read_line(&mut s), "NOOP\r\n");
        s.write_all(reply_227(5000).as_bytes()).unwrap();
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("PASV\r\n");
    let refused = c.line();
    assert!(refused.starts_with("425 "), "{refused:?}");
    c.send("NOOP\r\n");
    assert_eq!(c.line(), reply_227(5000));
}

#[test]
fn strangers_are_refused_and_an_unused_data_listener_closes_after_the_timeout() {
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = data.local_addr().unwrap().port();
    let server = scripted(move |mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        assert_eq!(read_line(&mut s), "PASV\r\n");
        s.write_all(reply_227(port).as_bytes()).unwrap();
        let (mut d, _) = data.accept().unwrap();
        d.write_all(b"ok").unwrap();
        drop(d);
        assert_eq!(read_line(&mut s), "PASV\r\n");
        s.write_all(reply_227(port).as_bytes()).unwrap();
        let _ = read_line(&mut s);
    });
    let proxy = ftp_proxy(server, &["--ftp-data-timeout", "2s"]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("PASV\r\n");
    let first = addr_227(&c.reply("227"));
    // A stranger (another source address) is refused; the listener goes on waiting.
    let stranger = socket_from("127.0.0.2", first);
    let stranger_ran = stranger.is_some();
    if let Some(mut s) = stranger {
        assert!(read_to_end(&mut s).is_empty());
    }
    let mut d = TcpStream::connect(first).unwrap();
    assert_eq!(read_to_end(&mut d), b"ok");
    // The second listener nobody connects to closes after --ftp-data-timeout.
    c.send("PASV\r\n");
    let second = addr_227(&c.reply("227"));
    // (Probing it by connecting would be the one connection it waits for.)
    wait_until("the unused listener to close", || {
        proxy
            .log_text()
            .contains("no data connection within the timeout")
    });
    assert!(TcpStream::connect(second).is_err());
    match stranger_ran {
        true => assert!(proxy.log_text().contains("stranger refused")),
        false => eprintln!(
            "SKIPPED (part): 127.0.0.2 is not usable as a source here; no stranger connected"
        ),
    }
}

/// A TCP connection to `to` from `from` (any port); `None` if that source is unusable.
fn socket_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    use std::os::fd::FromRawFd;
    let src: std::net::Ipv4Addr = from.parse().unwrap();
    let SocketAddr::V4(to) = to else { return None };
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as _;
        sa.sin_addr.s_addr = u32::from(src).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            libc::close(fd);
            return None;
        }
        sa.sin_port = to.port().to_be();
        sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        if libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            libc::close(fd);
            return None;
        }
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Some(s)
    }
}

#[test]
fn port_naming_another_host_or_a_low_port_is_refused_with_500() {
    let server = scripted(|mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        for _ in 0..2 {
            // The server never sees the refused PORT: a NOOP takes its place.
            assert_eq!(read_line(&mut s), "NOOP\r\n");
            s.write_all(b"200 NOOP ok\r\n").unwrap();
        }
        let port = read_line(&mut s);
        assert!(port.starts_with("PORT 127,0,0,1,"), "{port:?}");
        s.write_all(b"200 PORT ok\r\n").unwrap();
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("PORT 10,9,8,7,100,100\r\n");
    assert!(c.line().starts_with("500 "));
    c.send("port 127,0,0,1,0,21\r\n");
    assert!(c.line().starts_with("500 "));
    c.send("PORT 127,0,0,1,100,100\r\n");
    assert_eq!(c.line(), "200 PORT ok\r\n");
}

#[test]
fn after_auth_tls_is_accepted_the_control_connection_passes_untouched() {
    let server = scripted(|mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        assert_eq!(read_line(&mut s), "AUTH TLS\r\n");
        s.write_all(b"234 go ahead\r\n").unwrap();
        // Stand-ins for TLS records: whatever comes is passed, a "PORT" included.
        assert_eq!(read_line(&mut s), "PORT 10,9,8,7,100,100\r\n");
        s.write_all(reply_227(5000).as_bytes()).unwrap();
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("AUTH TLS\r\n");
    assert_eq!(c.line(), "234 go ahead\r\n");
    c.send("PORT 10,9,8,7,100,100\r\n");
    assert_eq!(c.line(), reply_227(5000));
    // The log is read by a thread of its own: the line may not be in yet.
    wait_until("the AUTH accepted line", || {
        proxy.log_text().contains("AUTH accepted")
    });
}

#[test]
fn an_overlong_reply_line_split_across_reads_still_answers_its_command() {
    // The server's reply to SYST is one 5000-byte line, sent in two parts: the second
    // only once the client has seen the first (so the proxy read them apart). The
    // 227 that answers the next command, PASV, must still be the proxy's.
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = data.local_addr().unwrap().port();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let server = scripted(move |mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        assert_eq!(read_line(&mut s), "SYST\r\n");
        s.write_all(format!("215 {}", "U".repeat(4500)).as_bytes())
            .unwrap();
        go_rx.recv_timeout(DEADLINE).unwrap();
        s.write_all(format!("{}\r\n", "U".repeat(496)).as_bytes())
            .unwrap();
        assert_eq!(read_line(&mut s), "PASV\r\n");
        s.write_all(reply_227(port).as_bytes()).unwrap();
        let (mut d, _) = data.accept().unwrap();
        d.write_all(b"through the proxy").unwrap();
        drop(d);
        let _ = read_line(&mut s);
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("SYST\r\n");
    let mut head = vec![0; 4504];
    c.reader.read_exact(&mut head).unwrap();
    assert_eq!(head, format!("215 {}", "U".repeat(4500)).as_bytes());
    go_tx.send(()).unwrap();
    assert_eq!(c.line(), format!("{}\r\n", "U".repeat(496)));
    c.send("PASV\r\n");
    let pasv = c.line();
    assert!(
        pasv.starts_with("227 ") && !pasv.contains("192,0,2,1"),
        "{pasv:?}"
    );
    let mut d = TcpStream::connect(addr_227(&pasv)).unwrap();
    assert_eq!(read_to_end(&mut d), b"through the proxy");
}

#[test]
fn an_overlong_command_line_is_refused_not_passed() {
    // A server that splits long lines would read the tail as a command of its own: a
    // PORT the proxy never checked. The proxy refuses the whole line instead.
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = data.local_addr().unwrap().port();
    let server = scripted(move |mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        for _ in 0..2 {
            assert_eq!(read_line(&mut s), "NOOP\r\n");
            s.write_all(b"200 NOOP ok\r\n").unwrap();
        }
        assert_eq!(read_line(&mut s), "PASV\r\n");
        s.write_all(reply_227(port).as_bytes()).unwrap();
        let _ = read_line(&mut s);
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    let smuggled = "PORT 10,9,8,7,100,100\r\n";
    // In one write, and in two (the proxy reading the head alone, most likely).
    c.send(&format!("NOOP{}{smuggled}", " ".repeat(5000)));
    let refused = c.line();
    assert!(refused.starts_with("500 "), "{refused:?}");
    c.send(&format!("NOOP{}", " ".repeat(5000)));
    c.send(smuggled);
    let refused = c.line();
    assert!(refused.starts_with("500 "), "{refused:?}");
    // Replies still pair with their commands.
    c.send("PASV\r\n");
    let pasv = c.line();
    assert!(
        pasv.starts_with("227 ") && !pasv.contains("192,0,2,1"),
        "{pasv:?}"
    );
}

#[test]
fn a_port_hidden_by_telnet_commands_or_odd_spacing_is_still_checked() {
    // The control connection is Telnet (RFC 959): servers that honour that strip IAC
    // sequences (IAC NOP, IAC IP before ABOR) before reading the verb, and some take
    // a tab or leading blanks as spacing. Each of these is a PORT to such a server,
    // naming another host: the proxy must refuse it, not pass it as "some other verb".
    let hidden: [&[u8]; 5] = [
        b"\xff\xf1PORT 10,9,8,7,100,100\r\n",
        b"PO\xff\xf1RT 10,9,8,7,100,100\r\n",
        b"\xff\xfb\x01EPRT |1|10.9.8.7|25700|\r\n",
        b"PORT\t10,9,8,7,100,100\r\n",
        b" \tPORT 10,9,8,7,100,100\r\n",
    ];
    let server = scripted(move |mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        for _ in 0..5 {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap_or(0) == 1 {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            // The refused command never arrives: a NOOP takes its place.
            let reply: &[u8] = match line == b"NOOP\r\n" {
                true => b"200 NOOP ok\r\n",
                false => b"200 PORT command successful\r\n",
            };
            s.write_all(reply).unwrap();
        }
        let _ = read_line(&mut s);
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    for line in hidden {
        c.stream.write_all(line).unwrap();
        let reply = c.line();
        assert!(reply.starts_with("500 "), "{line:?}: {reply:?}");
    }
}

#[test]
fn a_227_answering_no_command_is_not_taken_for_the_next_pasv_reply() {
    // The server slips a 227 in after its reply to PASS, before the client has sent
    // anything more: a client takes it for the answer to its next command, the PASV,
    // and would connect where the server said (10.0.0.99:22) rather than to the proxy.
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = data.local_addr().unwrap().port();
    let server = scripted(move |mut s| {
        s.write_all(b"220 hi\r\n").unwrap();
        assert_eq!(read_line(&mut s), "PASS x\r\n");
        s.write_all(b"230 ok\r\n227 Entering Passive Mode (10,0,0,99,0,22).\r\n")
            .unwrap();
        assert_eq!(read_line(&mut s), "PASV\r\n");
        s.write_all(reply_227(port).as_bytes()).unwrap();
        let (mut d, _) = data.accept().unwrap();
        d.write_all(b"via the proxy").unwrap();
        drop(d);
        assert_eq!(read_line(&mut s), "QUIT\r\n");
        s.write_all(b"221 bye\r\n").unwrap();
    });
    let proxy = ftp_proxy(server, &[]);
    let mut c = Control::connect(proxy.addr);
    c.reply("220");
    c.send("PASS x\r\n");
    assert_eq!(c.line(), "230 ok\r\n");
    c.send("PASV\r\n");
    let pasv = c.line();
    assert!(
        pasv.starts_with("227 ") && !pasv.contains("10,0,0,99") && !pasv.contains("192,0,2,1"),
        "{pasv:?}"
    );
    let mut d = TcpStream::connect(addr_227(&pasv)).unwrap();
    assert_eq!(read_to_end(&mut d), b"via the proxy");
    c.send("QUIT\r\n");
    assert_eq!(c.line(), "221 bye\r\n");
}

#[test]
fn bad_ftp_options_are_refused_at_start_with_the_reason() {
    for (args, want) in [
        (
            &["--ftp-data-timeout", "0s"][..],
            "--ftp-data-timeout must be more than 0",
        ),
        (&["--ftp-data-ports", "2000-1000"][..], "--ftp-data-ports"),
        (&["--udp"][..], "cannot be used with"),
    ] {
        let out = binary()
            .args([
                "proxy",
                "--ftp",
                "--upstream",
                "127.0.0.1:21",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
