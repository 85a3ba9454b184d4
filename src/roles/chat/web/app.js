// switchboard chat in the browser: one WebSocket, one text frame per line each way.
// Every line is shown with textContent, never as HTML: what users type shows literally.
"use strict";

const log = document.getElementById("log");
const who = document.getElementById("who");
const state = document.getElementById("state");
const roomEl = document.getElementById("room");
const nickEl = document.getElementById("nick");
const form = document.getElementById("say");
const input = document.getElementById("line");

let ws = null;
let nick = "";
let room = "lobby";
let wanted = null;        // the nick to take again after a reconnect
let backoff = 500;        // ms, doubled up to 10 s
let whoPending = 0;       // /who answers asked by the page itself, shown in the side list
let quitting = false;     // the user typed /quit: no reconnect

function show(text, kind) {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(item);
  while (log.childNodes.length > 2000) log.removeChild(log.firstChild);
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function setState(name, text) {
  state.className = name;
  state.textContent = text;
}

function send(line) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(line);
    return true;
  }
  return false;
}

// The side list asks /who after joins, departures and renames, at most once every 2 s
// (a burst of joins, or lines made to look like them, costs one /who per page).
let whoTimer = null;
let whoLast = 0;
function askWho() {
  if (whoTimer !== null) return;
  const wait = Math.max(0, whoLast + 2000 - Date.now());
  whoTimer = setTimeout(() => {
    whoTimer = null;
    whoLast = Date.now();
    if (send("/who")) whoPending++;
  }, wait);
}

function setWho(names) {
  who.replaceChildren(...names.map((n) => {
    const li = document.createElement("li");
    li.textContent = n;
    return li;
  }));
}

function received(line) {
  let m;
  if (whoPending > 0 && (m = /^\* in #(\S+): (.*)$/.exec(line)) && m[1] === room) {
    whoPending--;
    setWho(m[2].split(", ").filter((n) => n && !n.startsWith("…")));
    return;
  }
  if ((m = /^\* welcome to #(\S+), you are (\S+) /.exec(line))) {
    room = m[1];
    nick = m[2];
    if (wanted && wanted !== nick) send("/nick " + wanted);
  } else if ((m = /^\* (\S+) is now (\S+)$/.exec(line)) && m[1] === nick) {
    nick = m[2];
    wanted = nick;
  } else if ((m = /^\* now in #(\S+)$/.exec(line))) {
    room = m[1];
  }
  roomEl.textContent = "#" + room;
  nickEl.textContent = nick;
  const kind = line.startsWith("! ") ? "error"
    : /^\*\S+\* /.test(line) ? "private"
    : line.startsWith("* ") ? "notice"
    : "";
  show(line, kind);
  if (/^\* (\S+ (joined|left)|\S+ is now \S+|now in #|welcome to #)/.test(line)) askWho();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(scheme + "//" + location.host + "/ws");
  setState(backoff > 500 ? "reconnecting" : "connecting", backoff > 500 ? "reconnecting…" : "connecting…");
  ws.onopen = () => {
    backoff = 500;
    whoPending = 0;
    setState("online", "online");
  };
  ws.onmessage = (event) => received(String(event.data));
  ws.onclose = (event) => {
    if (event.reason) show("! connection closed: " + event.reason, "error");
    if (quitting) {
      setState("offline", "left (reload the page to join again)");
      return;
    }
    setState("reconnecting", "reconnecting…");
    // With jitter, so that browsers dropped together do not all come back at once.
    setTimeout(connect, backoff * (0.5 + Math.random()));
    backoff = Math.min(backoff * 2, 10000);
  };
}

// The line others get when this user says `typed`, or null when they get none: the
// server sends nobody's line back to its sayer, so the page shows its own, and shows it
// as the server's parse makes it (protocol.rs): controls but tab dropped, the end
// trimmed, blank lines ignored, `//text` said as `/text`, `/me` (any case, any
// whitespace after it) with its text trimmed, other commands not said at all.
function ownLine(typed) {
  const line = typed.replace(/[\p{Cc}]/gu, (c) => (c === "\t" ? c : "")).trimEnd();
  if (line.trim() === "") return null;
  if (!line.startsWith("/")) return "<" + nick + "> " + line;
  if (line.startsWith("//")) return "<" + nick + "> " + line.slice(1);
  const m = /^\/(\S+)\s*([\s\S]*)$/.exec(line);
  if (m && m[1].toLowerCase() === "me" && m[2].trim() !== "") return "* " + nick + " " + m[2].trim();
  return null;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const line = input.value;
  if (line === "") return;
  if (!send(line)) {
    show("! not connected; try again in a moment", "error");
    return;
  }
  if (/^\/quit\b/i.test(line)) {
    quitting = true;
  } else {
    const own = ownLine(line);
    if (own !== null) show(own, "mine");
  }
  input.value = "";
});

connect();
