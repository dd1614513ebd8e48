//! `docs/errors.md` is the one reference of wire codes: its table lists every `ErrorCode`, once,
//! and nothing else.

use std::collections::BTreeMap;

use domain::ErrorCode;

const DOCS: &str = include_str!("../../docs/errors.md");

/// The first cell of every table row naming a code (`| \`code\` | …`), with its line number.
fn documented_codes() -> Vec<(usize, String)> {
    DOCS.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let first = line.strip_prefix('|')?.split('|').next()?.trim();
            let code = first.strip_prefix('`')?.strip_suffix('`')?;
            Some((n + 1, code.to_owned()))
        })
        .collect()
}

#[test]
fn every_code_is_documented_once() {
    let mut rows: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (line, code) in documented_codes() {
        rows.entry(code).or_default().push(line);
    }
    let missing: Vec<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !rows.contains_key(*c))
        .collect();
    assert!(missing.is_empty(), "docs/errors.md lacks {missing:?}");
    let repeated: Vec<_> = rows.iter().filter(|(_, lines)| lines.len() > 1).collect();
    assert!(
        repeated.is_empty(),
        "docs/errors.md lists codes twice: {repeated:?}"
    );
}

#[test]
fn every_documented_code_is_a_code() {
    let documented = documented_codes();
    assert!(
        !documented.is_empty(),
        "docs/errors.md has no table of codes"
    );
    for (line, code) in documented {
        let parsed: Option<ErrorCode> = serde_json::from_value(code.clone().into()).ok();
        assert!(
            parsed.is_some_and(|c| ErrorCode::ALL.contains(&c)),
            "docs/errors.md:{line}: `{code}` is not an ErrorCode (or is missing from ErrorCode::ALL)"
        );
    }
}
