//! The hash chain's canonical JSON is what docs/design/hash-chain.md promises: byte for byte what
//! Python's `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` gives,
//! for random values with awkward keys and strings (control characters, quotes, non-ASCII).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<char>(),
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('\u{1f}'),
            Just('\u{7f}'),
            Just('\u{2028}'),
            Just('é'),
            Just('😀'),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn canonical_json_matches_pythons_sorted_compact_dumps() {
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    let values: Vec<Value> = (0..300)
        .map(|_| value().new_tree(&mut runner).unwrap().current())
        .collect();
    // One python process for all values: one JSON document per line in, one canonical line out.
    let input: String = values
        .iter()
        .map(|v| serde_json::to_string(v).unwrap() + "\n")
        .collect();
    let script = "import json,sys\n\
        for line in sys.stdin.buffer:\n\
        \x20   v = json.loads(line)\n\
        \x20   sys.stdout.buffer.write(json.dumps(v, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode() + b'\\n')\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let lines: Vec<&[u8]> = output.stdout.split(|b| *b == b'\n').collect();
    for (i, v) in values.iter().enumerate() {
        let ours = domain::hash_chain::canonical_json(v);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(lines[i]),
            "value {i}: {v}"
        );
    }
}
