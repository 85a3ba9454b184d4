//! `switchboard serve`, `check` and `reload` as an operator runs them: one config file,
//! several services in one process, the admin listener, and reloads that drop no one.
//! Every address is 127.0.0.1 port 0; the test finds the ports through `/services`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::prom::{self, Exposition};
use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::roles::echo::Echo;

/// A directory of its own for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("switchboard-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `serve` process logging JSON, its log kept line by line as it comes.
struct Served {
    proc: Proc,
    log: Arc<Mutex<Vec<serde_json::Value>>>,
    admin: SocketAddr,
}

impl Served {
    fn start(program: &Path, config: &Path, pid_file: &Path) -> Served {
        let mut command = std::process::Command::new(program);
        command
            .args(["--log-format", "json", "serve"])
            .arg(config)
            .arg("--pid-file")
            .arg(pid_file);
        Served::run(command)
    }

    /// Runs `command`, a `serve` with `--log-format json`.
    fn run(mut command: std::process::Command) -> Served {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let stdout = proc.0.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
                keep.lock().unwrap().push(value);
            }
        });
        let mut served = Served {
            proc,
            log,
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        served.wait_log("the admin listener", |l| {
            l["msg"] == "listening (TCP)" && l["role"] == "admin"
        });
        served.wait_log("serving", |l| l["msg"] == "serving");
        let admin = served.find_log(|l| l["role"] == "admin" && l["msg"] == "listening (TCP)");
        served.admin = admin.unwrap()["addr"].as_str().unwrap().parse().unwrap();
        served
    }

    fn find_log(&self, what: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        self.log.lock().unwrap().iter().find(|l| what(l)).cloned()
    }

    fn count_log(&self, what: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|l| what(l)).count()
    }

    fn wait_log(&mut self, name: &str, what: impl Fn(&serde_json::Value) -> bool) {
        wait_until(name, || {
            if let Some(status) = self.proc.0.try_wait().unwrap() {
                panic!("serve exited ({status}): {}", stderr_of(&mut self.proc));
            }
            self.find_log(&what).is_some()
        });
    }

    /// `GET path` on the admin listener: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        get(self.admin, path)
    }

    /// `/metrics`, parsed (strictly: a malformed line fails the test).
    fn metrics(&self) -> Exposition {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        prom::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    /// Waits until the sample `name` of `service` (role `role`, and `labels` more) has
    /// the value `want`.
    fn wait_metric(
        &self,
        name: &str,
        service: &str,
        role: &str,
        labels: &[(&str, &str)],
        want: f64,
    ) {
        let mut all = vec![("service", service), ("role", role)];
        all.extend_from_slice(labels);
        let mut last = None;
        wait_until(&format!("{name}{all:?} = {want} (last {last:?})"), || {
            last = self.metrics().get(name, &all);
            last == Some(want)
        });
    }

    /// The services as `/services` lists them.
    fn services(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.get("/services");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The first TCP (or UDP) address of service `name`.
    fn addr(&self, name: &str, transport: &str) -> SocketAddr {
        let list = self.services();
        let service = list
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no service {name} in {list:?}"));
        service[transport][0].as_str().unwrap().parse().unwrap()
    }
}

/// One HTTP/1.1 request, read to the close: status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = client(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let text = String::from_utf8(read_to_end(&mut s)).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Sends `data` and reads as many bytes back.
fn round_trip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).unwrap();
    read_n(s, data.len())
}

fn reload(pid_file: &Path) {
    let out = binary()
        .arg("reload")
        .arg("--pid-file")
        .arg(pid_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn config(upstream: SocketAddr, site: &Path, fourth: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[service]]
name = "chat"
role = "chat"
tcp = "127.0.0.1:0"
udp = "127.0.0.1:0"
max_conns = 100

[[service]]
name = "front"
role = "proxy"
listen = ["127.0.0.1:0"]
upstream = ["{upstream}"]
balance = "least-conn"

[[service]]
role = "http"
listen = "127.0.0.1:0"
root = "{}"
{fourth}"#,
        site.display()
    )
}

const ECHO: &str = r#"
[[service]]
role = "echo"
tcp = "127.0.0.1:0"
"#;

const UPPER: &str = r#"
[[service]]
role = "upper"
tcp = "127.0.0.1:0"
"#;

#[test]
fn serve_runs_four_roles_from_one_file_and_reloads_without_dropping_anyone() {
    let dir = Dir::new("reload");
    let site = dir.0.join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from the site\n").unwrap();
    let upstream = start_role(Echo, ServerConfig::default());
    let pid_file = dir.0.join("serve.pid");
    let path = dir.write("switchboard.toml", &config(upstream.tcp, &site, ECHO));
    let mut served = Served::start(
        Path::new(env!("CARGO_BIN_EXE_switchboard")),
        &path,
        &pid_file,
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        served.proc.0.id().to_string()
    );
    assert_eq!(served.get("/healthz"), (200, "ok\n".into()));

    // Every service answers.
    let names: Vec<String> = served
        .services()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["chat", "echo", "front", "http"]);
    let chat = served.addr("chat", "tcp");
    let mut a = User::join(chat);
    let mut b = User::join(chat);
    a.until(&format!("* {} joined", b.nick));
    a.say("before the reload");
    b.until(&format!("<{}> before the reload", a.nick));
    let mut session = client(served.addr("front", "tcp"));
    assert_eq!(
        round_trip(&mut session, b"through the proxy\n"),
        b"through the proxy\n"
    );
    let (status, body) = get(served.addr("http", "tcp"), "/index.html");
    assert_eq!((status, body.as_str()), (200, "hello from the site\n"));
    let echo = served.addr("echo", "tcp");
    assert_eq!(round_trip(&mut client(echo), b"echo\n"), b"echo\n");

    // The admin listener's /metrics counts exactly what went by.
    served.wait_metric("switchboard_connections_total", "echo", "echo", &[], 1.0);
    served.wait_metric("switchboard_bytes_in_total", "echo", "echo", &[], 5.0);
    served.wait_metric("switchboard_bytes_out_total", "echo", "echo", &[], 5.0);
    served.wait_metric(
        "switchboard_http_responses_total",
        "http",
        "http",
        &[("code", "2xx")],
        1.0,
    );
    served.wait_metric(
        "switchboard_chat_users",
        "chat",
        "chat",
        &[("transport", "tcp")],
        2.0,
    );
    served.wait_metric(
        "switchboard_chat_lines_said_total",
        "chat",
        "chat",
        &[],
        1.0,
    );
    served.wait_metric(
        "switchboard_current_connections",
        "front",
        "proxy",
        &[],
        1.0,
    );
    let up = served.metrics();
    for name in ["chat", "echo", "front", "http"] {
        let role = if name == "front" { "proxy" } else { name };
        assert_eq!(
            up.get("switchboard_up", &[("service", name), ("role", role)]),
            Some(1.0)
        );
    }

    // An invalid file changes nothing.
    std::fs::write(&path, "[[service]]\nrole = \"echo\"\nbogus = 1\n").unwrap();
    reload(&pid_file);
    served.wait_log("the refused reload", |l| {
        l["msg"] == "reload refused; nothing changed"
    });
    let refused = served.find_log(|l| l["msg"] == "reload refused; nothing changed");
    assert!(
        refused.unwrap()["problem"]
            .as_str()
            .unwrap()
            .ends_with(":3: service \"echo\": bogus: unknown key for role echo")
    );
    assert_eq!(served.services().len(), 4);
    assert_eq!(round_trip(&mut client(echo), b"still\n"), b"still\n");

    // echo goes, upper comes, chat takes new limits: nobody connected notices.
    let file = config(upstream.tcp, &site, UPPER).replace("max_conns = 100", "max_conns = 2");
    std::fs::write(&path, file).unwrap();
    reload(&pid_file);
    served.wait_log("the reload", |l| l["msg"] == "reloaded");
    let reloaded = served.find_log(|l| l["msg"] == "reloaded").unwrap();
    assert_eq!(
        (
            &reloaded["added"],
            &reloaded["changed"],
            &reloaded["removed"]
        ),
        (&"upper".into(), &"chat".into(), &"echo".into())
    );
    let names: Vec<String> = served
        .services()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["chat", "front", "http", "upper"]);
    // The addresses that stayed are the same sockets.
    assert_eq!(served.addr("chat", "tcp"), chat);
    b.say("after the reload");
    a.until(&format!("<{}> after the reload", b.nick));
    assert_eq!(
        round_trip(&mut session, b"same session\n"),
        b"same session\n"
    );
    let mut upper = client(served.addr("upper", "tcp"));
    assert_eq!(round_trip(&mut upper, b"upper\n"), b"UPPER\n");
    // The new limit holds for new clients: two users are in, a third is turned away.
    let mut third = client(chat);
    let mut refused = String::new();
    BufReader::new(&mut third).read_line(&mut refused).unwrap();
    assert_eq!(refused, "! server full\n");
    // The chat's counters went on through the reload (one service, one set of counters).
    served.wait_metric(
        "switchboard_refused_connections_total",
        "chat",
        "chat",
        &[("reason", "max_conns")],
        1.0,
    );
    served.wait_metric(
        "switchboard_chat_lines_said_total",
        "chat",
        "chat",
        &[],
        2.0,
    );
    served.wait_metric(
        "switchboard_chat_users",
        "chat",
        "chat",
        &[("transport", "tcp")],
        2.0,
    );
    // The removed echo drains and lets its port go.
    served.wait_log("echo's summary", |l| {
        l["service"] == "echo" && l["msg"].as_str().unwrap().starts_with("stopped: ")
    });
    wait_until("echo's port to close", || TcpStream::connect(echo).is_err());

    // SIGTERM: each service drains and says how it went; the pid file goes. (The proxy
    // would give an open session its whole --drain.)
    drop(session);
    signal(&served.proc, libc::SIGTERM);
    let status = wait_exit(&mut served.proc);
    assert!(status.success(), "{status}");
    a.until("* server shutting down");
    for name in ["chat", "front", "http", "upper"] {
        assert_eq!(
            served.count_log(|l| {
                l["service"] == name && l["msg"].as_str().unwrap().starts_with("stopped: ")
            }),
            1,
            "{name}"
        );
    }
    assert!(!pid_file.exists());
    upstream.stop();
}

#[test]
fn check_names_every_problem_with_its_line_and_serve_refuses_to_start() {
    let dir = Dir::new("check");
    let path = dir.write(
        "bad.toml",
        r#"[[service]]
role = "chat"
tcp = "127.0.0.1:0"
root = "/srv"
max_conns = "lots"

[[service]]
role = "http"
listen = "127.0.0.1:0"
root = "/nonexistent/switchboard"

[[service]]
role = "gopher"

[[service]]
role = "proxy"
name = "front"

[[service]]
role = "echo"
tcp = "127.0.0.1:7"
[[service]]
role = "upper"
name = "up"
tcp = "127.0.0.1:7"
"#,
    );
    let shown = path.display().to_string();
    for command in ["check", "serve"] {
        let out = binary().arg(command).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        let expected = [
            format!(
                "switchboard {command}: {shown}:4: service \"chat\": root: not an option of role chat (it is one of: http)"
            ),
            format!(
                "{shown}:5: service \"chat\": max_conns: invalid value 'lots' for '--max-conns <N>': invalid digit found in string"
            ),
            format!(
                "{shown}:10: service \"http\": root: --root /nonexistent/switchboard: No such file or directory (os error 2)"
            ),
            format!(
                "{shown}:12: service \"gopher\": role: unknown role \"gopher\" (known: chat, discard, echo, hello, http, proxy, upper)"
            ),
            format!("{shown}:15: service \"front\": upstream: is required"),
            format!("{shown}:25: service \"up\": 127.0.0.1:7 (TCP) is also service \"echo\"'s"),
        ];
        assert_eq!(err.lines().collect::<Vec<_>>(), expected, "{command}");
    }
    let out = binary()
        .arg("check")
        .arg(dir.write("not.toml", "x = ["))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not.toml:1: "),
        "the TOML error has its line"
    );
}

#[test]
fn a_plug_in_role_serves_beside_a_built_in_one() {
    // examples/rot13.rs: `Server::new().role("rot13", || Rot13).main()`. `cargo test`
    // builds the examples beside the binary.
    let program = Path::new(env!("CARGO_BIN_EXE_switchboard"))
        .parent()
        .unwrap()
        .join("examples/rot13");
    assert!(
        program.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        program.display()
    );
    let dir = Dir::new("plugin");
    let file = r#"
[admin]
listen = "127.0.0.1:0"

[[service]]
role = "rot13"
tcp = "127.0.0.1:0"
udp = "127.0.0.1:0"
max_conns = 10

[[service]]
role = "echo"
tcp = "127.0.0.1:0"
"#;
    let path = dir.write("plugin.toml", file);
    // The switchboard binary alone does not know the role.
    let out = binary()
        .args(["check", "--no-bind"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains(":5: service \"rot13\": role: unknown role \"rot13\"")
    );

    let mut served = Served::start(&program, &path, &dir.0.join("pid"));
    let mut rot13 = client(served.addr("rot13", "tcp"));
    assert_eq!(round_trip(&mut rot13, b"Hello\n"), b"Uryyb\n");
    assert_eq!(
        udp_round_trip(served.addr("rot13", "udp"), b"Hello"),
        b"Uryyb"
    );
    assert_eq!(
        round_trip(&mut client(served.addr("echo", "tcp")), b"Hello\n"),
        b"Hello\n"
    );
    drop(rot13);
    signal(&served.proc, libc::SIGTERM);
    assert!(wait_exit(&mut served.proc).success());
    assert_eq!(
        served.count_log(|l| l["service"] == "rot13"
            && l["msg"]
                .as_str()
                .unwrap()
                .starts_with("stopped: connections=1 ")),
        1
    );
}

#[test]
fn serve_takes_the_sockets_systemd_passes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // As systemd's socket activation does: the socket bound and listening already, as
    // descriptor 3, LISTEN_FDS=1 and LISTEN_PID the server's own pid.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("systemd");
    let path = dir.write(
        "sd.toml",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[service]]\nrole = \"echo\"\ntcp = \"{addr}\"\n"
        ),
    );
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--log-format", "json", "serve"])
        .arg(&path)
        .arg("--pid-file")
        .arg(dir.0.join("pid"));
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 and fcntl on
    // descriptors this process owns.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut served = Served::run(command);
    // Still held here, so a bind of its own would have failed: serve took the one passed.
    assert!(
        served
            .find_log(|l| l["msg"] == "taking the TCP socket systemd passed"
                && l["addr"] == addr.to_string().as_str()
                && l["used"] == true)
            .is_some()
    );
    drop(listener);
    assert_eq!(
        round_trip(&mut client(addr), b"activated\n"),
        b"activated\n"
    );
    // A reload that drops the address, and one that names it again: the passed socket
    // is kept for it (systemd still holds it, so a bind of our own would fail).
    let pid_file = dir.0.join("pid");
    std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    reload(&pid_file);
    served.wait_log("the first reload", |l| {
        l["msg"] == "reloaded" && l["removed"] == "echo"
    });
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[service]]\nrole = \"echo\"\ntcp = \"{addr}\"\n"
        ),
    )
    .unwrap();
    reload(&pid_file);
    served.wait_log("the second reload", |l| {
        l["msg"] == "reloaded" && l["added"] == "echo"
    });
    assert_eq!(round_trip(&mut client(addr), b"again\n"), b"again\n");
    signal(&served.proc, libc::SIGTERM);
    assert!(wait_exit(&mut served.proc).success());
}

#[test]
fn two_services_on_port_zero_get_a_port_each_and_keep_it_across_a_reload() {
    let dir = Dir::new("zero");
    let file = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[service]]\nrole = \"echo\"\ntcp = \"127.0.0.1:0\"\n\n[[service]]\nrole = \"upper\"\ntcp = \"127.0.0.1:0\"\n";
    let path = dir.write("zero.toml", file);
    let pid_file = dir.0.join("pid");
    let mut served = Served::start(
        Path::new(env!("CARGO_BIN_EXE_switchboard")),
        &path,
        &pid_file,
    );
    let (echo, upper) = (served.addr("echo", "tcp"), served.addr("upper", "tcp"));
    assert!(echo != upper && echo != served.admin && upper != served.admin);
    for _ in 0..4 {
        assert_eq!(round_trip(&mut client(echo), b"abc\n"), b"abc\n");
        assert_eq!(round_trip(&mut client(upper), b"abc\n"), b"ABC\n");
    }
    // A changed limit: each keeps its port.
    std::fs::write(
        &path,
        file.replace("role = \"upper\"", "role = \"upper\"\nmax_conns = 7"),
    )
    .unwrap();
    reload(&pid_file);
    served.wait_log("the reload", |l| l["msg"] == "reloaded");
    assert_eq!(
        (served.addr("echo", "tcp"), served.addr("upper", "tcp")),
        (echo, upper)
    );
    assert_eq!(round_trip(&mut client(upper), b"abc\n"), b"ABC\n");
    signal(&served.proc, libc::SIGTERM);
    assert!(wait_exit(&mut served.proc).success());
}
