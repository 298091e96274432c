//! The byte-exact envelope encoding (golden file), export, keys and ids.

mod common;

use std::path::PathBuf;

use common::{open, update};
use ferry_store::{Envelope, FORMAT_V1, Key32, RunId, genesis_hash, hex};

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/envelope_v1.bin")
}

fn golden_envelope() -> Envelope {
    let run: RunId = "0190f5c2-7a3b-7c4d-8e5f-0123456789ab".parse().unwrap();
    Envelope {
        seq: 300,
        at_ms: 1_700_000_000_123,
        prev_hash: genesis_hash(run),
        event: b"\x00\x01ferry golden event v1\xff".to_vec(),
    }
}

/// The checked-in file is the truth: an old log must still decode in a new
/// binary. Regenerate only for a deliberate format change, with
/// `GOLDEN_UPDATE=1 cargo test -p ferry-store --test format`.
#[test]
fn envelope_v1_matches_golden_bytes() {
    let env = golden_envelope();
    let bytes = env.encode();
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(golden_path(), &bytes).unwrap();
    }
    let golden = std::fs::read(golden_path()).expect("golden file checked in");
    assert_eq!(
        bytes, golden,
        "the envelope encoding changed: old logs would no longer read"
    );
    assert_eq!(golden[0], FORMAT_V1);
    // Spelled out: varint seq 300 (0xfb + u16 LE), varint at_ms (0xfd + u64 LE),
    // 32 raw hash bytes, varint length 24, the event bytes.
    assert_eq!(golden[1..4], [0xfb, 0x2c, 0x01]);
    assert_eq!(golden[4], 0xfd);
    assert_eq!(golden[5..13], 1_700_000_000_123u64.to_le_bytes());
    assert_eq!(golden[13..45], env.prev_hash);
    assert_eq!(golden[45], 24);
    assert_eq!(golden[46..], env.event[..]);
    assert_eq!(Envelope::decode(&golden).unwrap(), env);
}

#[test]
fn genesis_and_short_ids_are_stable() {
    let run: RunId = "0190f5c2-7a3b-7c4d-8e5f-0123456789ab".parse().unwrap();
    let mut pre = b"ferry.genesis".to_vec();
    pre.extend_from_slice(run.0.as_bytes());
    assert_eq!(genesis_hash(run), *blake3::hash(&pre).as_bytes());
    assert_eq!(run.to_string(), "0190f5c2-7a3b-7c4d-8e5f-0123456789ab");
    assert_eq!(run.short().len(), 8);
    assert_ne!(RunId::new().short(), RunId::new().short());
    let (a, b) = (RunId::new(), RunId::new());
    assert!(a < b, "v7 ids sort by creation time");
}

#[tokio::test]
async fn export_jsonl_renders_and_redacts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    let evs = vec![
        serde_json::to_vec(&serde_json::json!({"kind": "Submitted", "password": "hunter2"}))?,
        serde_json::to_vec(&serde_json::json!({"kind": "Planned"}))?,
    ];
    store
        .append(run, 0, 42, evs, update("exp", "P", true))
        .await?;
    let render = |bytes: &[u8]| {
        let mut v: serde_json::Value =
            serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
        if let Some(p) = v.get_mut("password") {
            *p = "<redacted>".into();
        }
        v
    };
    let mut out = Vec::new();
    assert_eq!(store.export_jsonl(run, &mut out, &render)?, 2);
    let text = String::from_utf8(out)?;
    assert!(!text.contains("hunter2"));
    let log = store.read(run, 0)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    for (line, env) in lines.iter().zip(&log) {
        assert_eq!(line["run"], run.to_string());
        assert_eq!(line["seq"], env.seq);
        assert_eq!(line["at_ms"], 42);
        assert_eq!(line["prev_hash"], hex(&env.prev_hash));
        assert_eq!(line["hash"], hex(&env.hash()));
    }
    assert_eq!(lines[0]["event"]["password"], "<redacted>");
    assert_eq!(lines[1]["event"]["kind"], "Planned");
    Ok(())
}

#[test]
fn key_file_is_created_0600_and_read_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keys/nested/audit.key");
    let k1 = Key32::load_or_create(&path)?;
    let bytes = std::fs::read(&path)?;
    assert_eq!(bytes.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    let k2 = Key32::load_or_create(&path)?;
    assert_eq!(format!("{k1:?}"), "Key32(<redacted>)");
    // Same key both times: a MAC made with one verifies with the other.
    let run = RunId::new();
    assert_eq!(
        ferry_store::head_mac(&k1, run, 1, &[0; 32]),
        ferry_store::head_mac(&k2, run, 1, &[0; 32])
    );
    std::fs::write(&path, b"short")?;
    assert!(matches!(
        Key32::load_or_create(&path),
        Err(ferry_store::Error::Key { .. })
    ));
    Ok(())
}
