//! The config file of `serve` and `check`: TOML, read with serde (`deny_unknown_fields`
//! on every fixed table) and then, key by key, through the role's own clap arguments.
//!
//! ```toml
//! [admin]
//! listen = "127.0.0.1:9090"
//!
//! [[service]]
//! name = "chat"          # unique; defaults to the role
//! role = "chat"
//! tcp = "127.0.0.1:7000"
//! max_conns = 5000
//! ```
//!
//! Every other key of a `[[service]]` table is the long flag of that role's subcommand
//! with dashes as underscores: `max_conns = 5000` is `--max-conns 5000`, an array is the
//! flag repeated, `true` is the bare flag (`false` leaves it out), and durations are
//! strings as on the command line (`idle_timeout = "5m"`). So the file is parsed by the
//! very arguments the command line is: nothing is learned twice, no default or check is
//! written twice. Each problem names the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The fixed top level of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    service: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

/// `[admin]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

/// One problem with a config file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The line (from 1), when the problem has one.
    pub line: Option<usize>,
    /// The service it is in (its name), if any.
    pub service: Option<String>,
    /// The key, if the problem is with one.
    pub key: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl Problem {
    fn at(line: Option<usize>, message: impl Into<String>) -> Problem {
        Problem {
            line,
            service: None,
            key: None,
            message: message.into(),
        }
    }

    /// The same problem, in service `name`.
    pub fn in_service(mut self, name: &str) -> Problem {
        self.service.get_or_insert_with(|| name.to_owned());
        self
    }

    /// The same problem, about `key`.
    pub fn with_key(mut self, key: &str) -> Problem {
        self.key.get_or_insert_with(|| key.to_owned());
        self
    }
}

/// A list of problems, shown one per line as `FILE:LINE: service NAME: key KEY: ...`.
#[derive(Debug)]
pub struct Problems {
    pub path: PathBuf,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
            if let Some(service) = &p.service {
                write!(f, "service {service:?}: ")?;
            }
            if let Some(key) = &p.key {
                write!(f, "{key}: ")?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The file, parsed: what `serve` runs, before any role has looked at its keys.
#[derive(Clone, Debug)]
pub struct File {
    /// The admin listener's address and its line.
    pub admin: Option<(String, usize)>,
    pub services: Vec<ServiceSpec>,
}

/// One `[[service]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    /// Its name (unique in the file; the role's name when not given).
    pub name: String,
    /// The line of its `name` key (its table's, when it has none).
    pub name_line: usize,
    pub role: String,
    /// The line its table starts on.
    pub line: usize,
    /// Its other keys, in the file's order.
    pub keys: Vec<Key>,
}

/// One key of a `[[service]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// As written (`max_conns`).
    pub name: String,
    pub line: usize,
    /// As command-line arguments (`--max-conns=5000`; a bare `--tap` for `true`).
    pub args: Vec<String>,
}

impl ServiceSpec {
    /// The line of `key` (as written in the file, or as its flag `--key`), if present.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let key = key.trim_start_matches("--").replace('-', "_");
        self.keys.iter().find(|k| k.name == key).map(|k| k.line)
    }

    /// All its keys as command-line arguments.
    pub fn args(&self) -> Vec<String> {
        self.keys
            .iter()
            .flat_map(|k| k.args.iter().cloned())
            .collect()
    }
}

/// Where the lines of a text end, to find the line of an offset without counting from
/// the start each time (a file of thousands of keys would take quadratic time).
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Lines {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// Line (from 1) of byte `offset`.
    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

/// Reads and parses the file at `path`.
pub fn read(path: &Path) -> Result<File, Problems> {
    let problems = |list| Problems {
        path: path.to_owned(),
        list,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| problems(vec![Problem::at(None, format!("cannot read it: {e}"))]))?;
    parse(&text).map_err(problems)
}

/// Parses the text of a config file.
pub fn parse(text: &str) -> Result<File, Vec<Problem>> {
    let lines = Lines::of(text);
    let line = |span: Range<usize>| lines.at(span.start);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        // The parser's own message, without its excerpt of the file: the line says where.
        let message = e.message().trim_end().to_owned();
        vec![Problem::at(e.span().map(line), message)]
    })?;
    let mut problems = Vec::new();
    let admin = raw.admin.map(|admin| {
        let listen = admin.into_inner().listen;
        let at = line(listen.span());
        (listen.into_inner(), at)
    });
    let mut services: Vec<ServiceSpec> = Vec::new();
    for table in raw.service {
        let at = line(table.span());
        let mut role = None;
        let mut name = None;
        let mut keys = Vec::new();
        for (key, value) in table.into_inner() {
            let key_line = line(key.span());
            let key = key.into_inner();
            match key.as_str() {
                "role" | "name" => match value.into_inner() {
                    toml::Value::String(s) if !s.is_empty() => {
                        if key == "role" {
                            role = Some(s);
                        } else {
                            name = Some((s, key_line));
                        }
                    }
                    _ => problems.push(
                        Problem::at(Some(key_line), "must be a non-empty string").with_key(&key),
                    ),
                },
                _ => {
                    if key.contains('-') {
                        problems.push(
                            Problem::at(
                                Some(key_line),
                                format!(
                                    "keys are written with underscores: {}",
                                    key.replace('-', "_")
                                ),
                            )
                            .with_key(&key),
                        );
                        continue;
                    }
                    match flag_values(&key, value.into_inner()) {
                        Ok(args) => keys.push(Key {
                            name: key,
                            line: key_line,
                            args,
                        }),
                        Err(message) => {
                            problems.push(Problem::at(Some(key_line), message).with_key(&key));
                        }
                    }
                }
            }
        }
        keys.sort_by_key(|k| k.line); // the map holds them sorted by name
        let Some(role) = role else {
            problems.push(Problem::at(
                Some(at),
                "a [[service]] needs a role = \"...\"",
            ));
            continue;
        };
        // Two tables of one name are found by `check`, which still checks both.
        let (name, name_line) = name.unwrap_or_else(|| (role.clone(), at));
        services.push(ServiceSpec {
            name,
            name_line,
            role,
            line: at,
            keys,
        });
    }
    if problems.is_empty() {
        Ok(File { admin, services })
    } else {
        Err(problems)
    }
}

/// `key = value` as command-line arguments: `--key=VALUE`, one argument, so that a value
/// that starts with a dash (`message = "-- hi --"`, `rate = -1`) is the flag's value and
/// never read as a flag of its own.
fn flag_values(key: &str, value: toml::Value) -> Result<Vec<String>, String> {
    let flag = format!("--{}", key.replace('_', "-"));
    let one = |v: toml::Value| -> Result<String, String> {
        Ok(match v {
            toml::Value::String(s) => format!("{flag}={s}"),
            toml::Value::Integer(i) => format!("{flag}={i}"),
            toml::Value::Float(f) => format!("{flag}={f}"),
            // `true` is the bare flag (`false` never gets here).
            toml::Value::Boolean(_) => flag.clone(),
            other => {
                return Err(format!(
                    "expected a string, a number, true/false or an array of them, found a {}",
                    other.type_str()
                ));
            }
        })
    };
    match value {
        toml::Value::Boolean(false) => Ok(Vec::new()),
        toml::Value::Array(items) => {
            let mut args = Vec::new();
            for item in items {
                match item {
                    toml::Value::Boolean(_) | toml::Value::Array(_) => {
                        return Err("an array holds strings or numbers".into());
                    }
                    item => args.push(one(item)?),
                }
            }
            Ok(args)
        }
        value => Ok(vec![one(value)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags_with_their_lines() {
        let file = parse(
            "[admin]\nlisten = \"127.0.0.1:9090\"\n\n[[service]]\nrole = \"proxy\"\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nmax_conns = 5\ntap = true\naccept_proxy = false\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(file.admin, Some(("127.0.0.1:9090".into(), 2)));
        let s = &file.services[0];
        assert_eq!(
            (s.name.as_str(), s.role.as_str(), s.line),
            ("proxy", "proxy", 4)
        );
        assert_eq!(
            s.args(),
            [
                "--listen=127.0.0.1:1",
                "--listen=127.0.0.1:2",
                "--max-conns=5",
                "--tap",
                "--idle-timeout=5m"
            ]
        );
        assert_eq!(s.line_of("max_conns"), Some(7));
        assert_eq!(s.line_of("--idle-timeout"), Some(10));
    }

    #[test]
    fn lines_of_offsets() {
        let lines = Lines::of("a\nbc\n\nd");
        let at: Vec<usize> = (0..8).map(|o| lines.at(o)).collect();
        assert_eq!(at, [1, 1, 2, 2, 2, 3, 4, 4]);
    }

    #[test]
    fn every_problem_has_its_line() {
        let bad = |text: &str| parse(text).unwrap_err();
        let p = bad("[[service]]\nrole = \"echo\"\ntcp = \n");
        assert_eq!(p[0].line, Some(3), "{p:?}");
        let p = bad("[admin]\nlisten = \"x\"\nport = 3\n");
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].message.contains("unknown field `port`"), "{p:?}");
        let p = bad("[[service]]\ntcp = \"127.0.0.1:0\"\n");
        assert_eq!(p[0].line, Some(1));
        assert!(p[0].message.contains("needs a role"));
        let p = bad("[[service]]\nrole = \"echo\"\nmax-conns = 3\n");
        assert_eq!(
            (p[0].line, p[0].key.as_deref()),
            (Some(3), Some("max-conns"))
        );
        let p = bad("[[service]]\nrole = \"echo\"\nallow = { a = 1 }\n");
        assert_eq!(p[0].line, Some(3));
        let p = bad("verbose = 1\n");
        assert_eq!(p[0].line, Some(1), "{p:?}");
    }
}
