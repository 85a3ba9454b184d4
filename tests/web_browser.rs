//! `chat --web` in a real browser: headless Chromium loads the page and is driven over
//! the Chrome DevTools Protocol (tungstenite + serde_json, `Runtime.evaluate`), with a
//! TCP user in the same room. The page joins, shows what the TCP user says, sends what
//! is typed into it, and shows HTML as text; its policy (CSP) arrives with it and
//! nothing on the page breaks it or reports an error.
//!
//! Without `chromium` on PATH the test says SKIPPED (and fails under `CI=true`, where
//! `.ci/run` installs it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use switchboard::roles::chat::web::CSP;
use tungstenite::{Message, WebSocket};

/// A chat process serving TCP, UDP and the web on free ports.
struct Chat {
    _proc: Logged,
    tcp: SocketAddr,
    web: SocketAddr,
}

impl Chat {
    fn start() -> Chat {
        let mut cmd = binary();
        cmd.args(["chat", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
            .args(["--web", "127.0.0.1:0", "--log-format", "json"]);
        let proc = Logged::spawn(cmd);
        Chat {
            tcp: proc.addr(&["listening (TCP)", "\"role\":\"chat\""]),
            web: proc.addr(&["listening (web)"]),
            _proc: proc,
        }
    }
}

/// Headless Chromium with its own throwaway profile, in its own process group: dropping
/// it kills the whole group (browser, zygotes, renderers) and removes the profile.
struct Browser {
    child: Child,
    profile: PathBuf,
    /// Everything it wrote to stderr so far, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
    /// The DevTools HTTP endpoint.
    devtools: SocketAddr,
}

impl Browser {
    fn start(path: PathBuf) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "switchboard-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(path)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-breakpad",
                "--disable-crash-reporter",
                "--mute-audio",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("DevTools listening on ws://")
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut browser = Browser {
            child,
            profile,
            stderr: lines,
            devtools: "127.0.0.1:0".parse().unwrap(),
        };
        // Chromium's first start on a loaded machine is slow: the whole deadline.
        match rx.recv_timeout(DEADLINE) {
            Ok(addr) => browser.devtools = addr,
            Err(e) => panic!(
                "chromium never said where DevTools listens ({e}); its stderr:\n{}",
                browser.stderr_text()
            ),
        }
        browser
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The DevTools WebSocket of the page target showing `url`.
    fn page_target(&self, url: &str) -> String {
        let mut found = None;
        wait_until("chromium's page target", || {
            let list: Value = serde_json::from_str(&http_get(self.devtools, "/json/list"))
                .expect("/json/list is JSON");
            found = list.as_array().into_iter().flatten().find_map(|t| {
                (t["type"] == "page" && t["url"] == url)
                    .then(|| t["webSocketDebuggerUrl"].as_str())
                    .flatten()
                    .map(str::to_string)
            });
            found.is_some()
        });
        found.unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child, which leads it.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A GET to a local HTTP/1.1 server; the body (read by Content-Length).
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = client(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "GET {path}: {status:?}");
    let mut length = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => body = read_n(&mut r, n),
        None => {
            r.read_to_end(&mut body).unwrap();
        }
    }
    String::from_utf8(body).unwrap()
}

/// A DevTools Protocol session with one page: commands and their answers; the events
/// that arrive meanwhile are kept.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    events: Vec<Value>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let addr: SocketAddr = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("webSocketDebuggerUrl {url:?}"));
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("the DevTools handshake");
        Cdp {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends `method` and waits for its result (a DevTools error is a panic).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.request(method, params)
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// Sends `method` and waits for its result or its error.
    fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::Text(command.to_string().into()))
            .unwrap();
        loop {
            let message = self.read();
            if message["id"] == id {
                return match message.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// The next message (the socket's read timeout, [`DEADLINE`], bounds the wait).
    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a DevTools message") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected DevTools message {other:?}"),
            }
        }
    }

    /// The value of a JavaScript expression in the page, or what went wrong: an
    /// exception, or no document to ask (as while one replaces another).
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self.request(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// The value of a JavaScript expression in the page (a failure is a panic).
    fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression} failed: {e}"))
    }

    /// Polls until `expression` is `true` in the page; at the deadline, what it was
    /// instead goes to stderr before the panic.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let start = std::time::Instant::now();
        wait_until(what, || {
            let last = self.try_eval(expression);
            let done = last == Ok(json!(true));
            if !done && start.elapsed() >= DEADLINE {
                eprintln!("{what}: {expression} was {last:?}");
            }
            done
        });
    }

    /// The events named `method` seen so far.
    fn events(&self, method: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == method)
            .collect()
    }
}

/// `text` as a JavaScript string literal.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// An expression: whether the page's log has an item whose text is exactly `line`.
fn log_has(line: &str, class: Option<&str>) -> String {
    let selector = match class {
        Some(class) => format!("#log li.{class}"),
        None => "#log li".to_string(),
    };
    format!(
        "Array.from(document.querySelectorAll({}), li => li.textContent).includes({})",
        js(&selector),
        js(line)
    )
}

#[test]
fn the_page_in_chromium_joins_talks_with_a_tcp_user_and_shows_html_as_text() {
    let test = "the_page_in_chromium_joins_talks_with_a_tcp_user_and_shows_html_as_text";
    let Some(path) = program_on_path("chromium", test) else {
        return;
    };
    let chat = Chat::start();
    let browser = Browser::start(path);
    let mut page = Cdp::connect(&browser.page_target("about:blank"));

    // Watch everything from the first byte: console, exceptions, the browser's own log,
    // responses, dialogs (an alert would be script run from a chat line), and the CSP
    // violations the page itself sees (recorded by a script DevTools adds to every
    // document, which the page's policy does not govern).
    for domain in ["Runtime", "Log", "Network", "Page"] {
        page.call(&format!("{domain}.enable"), json!({}));
    }
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "window.__violations = []; document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));" }),
    );
    let url = format!("http://{}/", chat.web);
    let navigated = page.call("Page.navigate", json!({ "url": url }));
    assert!(navigated.get("errorText").is_none(), "{navigated}");
    // (Page.navigate answers before the new document is in place.)
    page.wait_for(
        "the page to load",
        &format!(
            "location.href === {} && document.readyState === 'complete'",
            js(&url)
        ),
    );

    // The page joins: online, with a nick the server gave it.
    page.wait_for(
        "the page to be online with a nick",
        "document.getElementById('state').textContent === 'online' && document.getElementById('nick').textContent !== ''",
    );
    let nick = page.eval("document.getElementById('nick').textContent");
    let nick = nick.as_str().unwrap().to_string();
    assert!(nick.starts_with("guest"), "{nick}");
    page.wait_for(
        "the page's welcome line",
        &format!(
            "Array.from(document.querySelectorAll('#log li'), li => li.textContent).some(t => t.startsWith({}))",
            js(&format!("* welcome to #lobby, you are {nick} "))
        ),
    );

    // A TCP user's line shows in the page (and the page lists the TCP user as here).
    let mut tcp = User::join(chat.tcp);
    page.wait_for(
        "the TCP user's join in the page",
        &log_has(&format!("* {} joined", tcp.nick), Some("notice")),
    );
    page.wait_for(
        "the TCP user in the page's who list",
        &format!(
            "Array.from(document.querySelectorAll('#who li'), li => li.textContent).includes({})",
            js(&tcp.nick)
        ),
    );
    tcp.say("hello from telnet");
    page.wait_for(
        "the TCP user's line in the page",
        &log_has(&format!("<{}> hello from telnet", tcp.nick), None),
    );

    // What is typed into the page reaches the TCP user, and shows in the page as its own.
    let left = page.eval(&format!(
        "(() => {{ const input = document.getElementById('line'); input.value = {}; document.getElementById('say').requestSubmit(); return input.value; }})()",
        js("hello from the browser")
    ));
    assert_eq!(left, json!(""), "the form did not send the line");
    tcp.until(&format!("<{nick}> hello from the browser"));
    page.wait_for(
        "the page's own line, shown as its own",
        &log_has(&format!("<{nick}> hello from the browser"), Some("mine")),
    );

    // The server does not echo a line to its sayer: the page shows its own lines itself,
    // and must show them as the others get them (or not at all when they get nothing).
    let typed = [
        "//slash, not a command",
        "/me waves",
        r"/ME\tshouts",
        "/me   spaced out   ",
        "trailing spaces   ",
        "   ",
        "/me ",
        r"a\u0007bell",
        "the last one",
    ];
    for line in typed {
        // (Each in the JS literal as written: `\t` and `\u0007` are a tab and a BEL.)
        let left = page.eval(&format!(
            "(() => {{ const input = document.getElementById('line'); input.value = \"{line}\"; document.getElementById('say').requestSubmit(); return input.value; }})()"
        ));
        assert_eq!(left, json!(""), "the form did not send {line:?}");
    }
    let others_got: Vec<String> = tcp
        .until(&format!("<{nick}> the last one"))
        .into_iter()
        .filter(|l| l.starts_with(&format!("<{nick}> ")) || l.starts_with(&format!("* {nick} ")))
        .chain([format!("<{nick}> the last one")])
        .collect();
    assert_eq!(
        others_got,
        [
            format!("<{nick}> /slash, not a command"),
            format!("* {nick} waves"),
            format!("* {nick} shouts"),
            format!("* {nick} spaced out"),
            format!("<{nick}> trailing spaces"),
            format!("<{nick}> abell"),
            format!("<{nick}> the last one"),
        ]
    );
    page.wait_for(
        "the page's last line",
        &log_has(&format!("<{nick}> the last one"), Some("mine")),
    );
    let page_shows = page.eval(
        "Array.from(document.querySelectorAll('#log li.mine'), li => li.textContent).slice(1)",
    );
    assert_eq!(
        page_shows,
        json!(others_got),
        "the page shows its own lines other than the others get them"
    );

    // HTML from a chat line is text: the literal characters, no element, no script run.
    let html = "<b>bold</b> <img src=x onerror=alert(1)>";
    tcp.say(html);
    page.wait_for(
        "the HTML line in the page",
        &log_has(&format!("<{}> {html}", tcp.nick), None),
    );
    assert_eq!(
        page.eval("document.querySelector('#log b, #log img, #who b, #who img') === null && document.querySelectorAll('img').length === 0"),
        json!(true),
        "a chat line became HTML"
    );

    // The page's response carried its policy, and nothing broke it or reported an error.
    let document = page
        .events("Network.responseReceived")
        .into_iter()
        .find(|e| e["params"]["type"] == "Document" && e["params"]["response"]["url"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("no Network.responseReceived for {url}"));
    let headers = document["params"]["response"]["headers"]
        .as_object()
        .unwrap();
    let csp = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-security-policy"))
        .map(|(_, value)| value.as_str().unwrap_or_default());
    assert_eq!(csp, Some(CSP), "the page's headers: {headers:?}");
    let violations = page.eval("window.__violations");
    assert_eq!(violations, json!([]), "CSP violations");
    let mut errors: Vec<String> = Vec::new();
    for event in page.events("Runtime.consoleAPICalled") {
        if matches!(event["params"]["type"].as_str(), Some("error" | "assert")) {
            errors.push(event["params"].to_string());
        }
    }
    for event in page.events("Runtime.exceptionThrown") {
        errors.push(event["params"].to_string());
    }
    for event in page.events("Log.entryAdded") {
        let entry = &event["params"]["entry"];
        // (The browser asks for /favicon.ico by itself; the listener answers 204, so
        // that is no error either.)
        if entry["level"] == "error" {
            errors.push(entry.to_string());
        }
    }
    for event in page.events("Page.javascriptDialogOpening") {
        errors.push(format!("a dialog: {}", event["params"]));
    }
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
}
