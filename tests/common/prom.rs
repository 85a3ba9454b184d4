//! A strict parser of the OpenMetrics text format (what `switchboard::metrics::render`
//! writes), for the tests: it checks the metadata lines (`# HELP`, `# TYPE`, `# UNIT`),
//! that each family's samples come together after its metadata and carry a suffix its
//! type allows, label syntax and escaping, numeric values, no duplicate series, the
//! histograms' cumulative buckets, and the closing `# EOF`. Anything else is an error
//! naming the line.

use std::collections::HashSet;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's own name (`x_total`, `x_bucket`, ...).
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One family: its metadata and its samples, in order.
#[derive(Clone, Debug, Default)]
pub struct MetricFamily {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

/// A whole exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub families: Vec<MetricFamily>,
}

const TYPES: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "stateset",
    "info",
    "unknown",
];

impl Exposition {
    /// The family named `name` (as its `# TYPE` line gives it).
    pub fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the sample `name` whose labels are exactly `labels` (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort();
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| {
                let mut have: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                have.sort();
                s.name == name && have == want
            })
            .map(|s| s.value)
    }
}

/// Parses `text`, or says which line is wrong and why.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition does not end with \"# EOF\\n\"")?;
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("the last line before # EOF has no newline".into());
    }
    let mut out = Exposition::default();
    // Families seen, so one that comes back after another is caught.
    let mut seen: HashSet<String> = HashSet::new();
    let mut series: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let (keyword, rest) = meta
                .split_once(' ')
                .ok_or_else(|| at("bare comment".into()))?;
            let (name, arg) = rest.split_once(' ').ok_or_else(|| at("no value".into()))?;
            check_name(name).map_err(at)?;
            let starts_family = out.families.last().is_none_or(|f| f.name != name);
            if starts_family {
                if !seen.insert(name.to_string()) {
                    return Err(at(format!("family {name} comes back after another")));
                }
                out.families.push(MetricFamily {
                    name: name.to_string(),
                    ..Default::default()
                });
            }
            let family = out.families.last_mut().expect("pushed above");
            if !family.samples.is_empty() {
                return Err(at("metadata after the family's samples".into()));
            }
            match keyword {
                "HELP" => {
                    if family.help.is_some() {
                        return Err(at("a second HELP".into()));
                    }
                    family.help = Some(unescape(arg, false).map_err(at)?);
                }
                "TYPE" => {
                    if !family.kind.is_empty() {
                        return Err(at("a second TYPE".into()));
                    }
                    if !TYPES.contains(&arg) {
                        return Err(at(format!("unknown type {arg}")));
                    }
                    family.kind = arg.to_string();
                }
                "UNIT" => {
                    if family.unit.is_some() {
                        return Err(at("a second UNIT".into()));
                    }
                    check_name(arg).map_err(at)?;
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(at(format!("the name does not end in its unit {arg}")));
                    }
                    family.unit = Some(arg.to_string());
                }
                other => return Err(at(format!("unknown keyword {other}"))),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("a comment that is not metadata".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = out
            .families
            .last_mut()
            .ok_or_else(|| at("a sample before any # TYPE".into()))?;
        if family.kind.is_empty() {
            return Err(at("a sample of a family with no # TYPE".into()));
        }
        let suffix = sample
            .name
            .strip_prefix(family.name.as_str())
            .ok_or_else(|| at(format!("not a sample of family {}", family.name)))?;
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" | "stateset" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} for a {}", family.kind)));
        }
        if family.kind == "counter"
            && suffix == "_total"
            && (sample.value.is_nan() || sample.value < 0.0)
        {
            return Err(at("a negative counter".into()));
        }
        if (suffix == "_bucket") != sample.labels.iter().any(|(k, _)| k == "le") {
            return Err(at(
                "le on a sample that is not a bucket, or a bucket without".into(),
            ));
        }
        let mut key = sample.labels.clone();
        key.sort();
        if !series.insert((sample.name.clone(), key)) {
            return Err(at("a series given twice".into()));
        }
        family.samples.push(sample);
    }
    for family in &out.families {
        if family.kind.is_empty() {
            return Err(format!("family {} has no # TYPE", family.name));
        }
        if family.kind == "histogram" {
            check_histogram(family)?;
        }
    }
    Ok(out)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars.next().ok_or("an empty name")?;
    if !(first.is_ascii_alphabetic() || first == '_' || first == ':')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars.next().ok_or("an empty label name")?;
    if !(first.is_ascii_alphabetic() || first == '_')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("bad label name {name:?}"));
    }
    Ok(())
}

/// Undoes `\\`, `\"` and `\n`; any other backslash is an error, and so is a bare `"`
/// where `quoted` (inside a label value).
fn unescape(text: &str, quoted: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?}")),
            },
            '"' if quoted => return Err("an unescaped quote".into()),
            '\n' | '\r' => return Err("a raw line break".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample with no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                if !labels.is_empty() {
                    return Err("a comma before }".into());
                }
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("a label with no =")?;
            let key = &rest[..eq];
            check_label_name(key)?;
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("a label value not quoted")?;
            // The closing quote: the first `"` not escaped.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("an unterminated label value")?;
            let value = unescape(&rest[..end], true)?;
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} given twice"));
            }
            labels.push((key.to_string(), value));
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
                if rest.starts_with('}') {
                    return Err("a comma before }".into());
                }
            } else if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            } else {
                return Err("labels not separated by commas".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = parse_number(parts.next().unwrap_or_default())?;
    if let Some(ts) = parts.next() {
        parse_number(ts).map_err(|e| format!("timestamp: {e}"))?;
    }
    if parts.next().is_some() {
        return Err("more after the value and timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A number as the format writes it: decimal, exponent, `+Inf`, `-Inf`, `NaN`.
fn parse_number(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let plain = !digits.is_empty()
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && digits.starts_with(|c: char| c.is_ascii_digit());
    if !plain {
        return Err(format!("not a number: {text:?}"));
    }
    text.parse::<f64>()
        .map_err(|_| format!("not a number: {text:?}"))
}

/// Each histogram series: buckets in ascending `le`, cumulative, ending at `+Inf` with
/// the `_count`, and a `_sum`.
fn check_histogram(family: &MetricFamily) -> Result<(), String> {
    let name = &family.name;
    // Series by their labels without `le`.
    type Labels = Vec<(String, String)>;
    let mut groups: Vec<(Labels, Vec<&Sample>)> = Vec::new();
    for s in &family.samples {
        let mut key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        key.sort();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    for (key, samples) in groups {
        let what = |why: &str| format!("histogram {name} {key:?}: {why}");
        let mut last: Option<(f64, f64)> = None;
        let (mut count, mut sum) = (None, None);
        for s in samples {
            if s.name.ends_with("_bucket") {
                let le = &s.labels.iter().find(|(k, _)| k == "le").expect("checked").1;
                let le = parse_number(le).map_err(|e| what(&e))?;
                if let Some((prev_le, prev)) = last {
                    if le <= prev_le {
                        return Err(what("buckets out of order"));
                    }
                    if s.value < prev {
                        return Err(what("buckets not cumulative"));
                    }
                }
                last = Some((le, s.value));
            } else if s.name.ends_with("_count") {
                count = Some(s.value);
            } else if s.name.ends_with("_sum") {
                sum = Some(s.value);
            }
        }
        match (last, count, sum) {
            (Some((le, top)), Some(count), Some(_)) if le == f64::INFINITY && top == count => {}
            _ => return Err(what("no +Inf bucket equal to _count, or no _sum")),
        }
    }
    Ok(())
}
