//! Blob files: round trips, encryption at rest, tampering, retention.

mod common;

use common::{open, opts, update};
use ferry_store::{Error, RunId, Store, StoreOptions, hex};

fn blob_file(dir: &std::path::Path, hash: &[u8; 32]) -> std::path::PathBuf {
    dir.join("blobs").join(hex(hash))
}

#[test]
fn plain_and_encrypted_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    let secret = b"apiVersion: v1\nkind: Secret\ndata:\n  password: c3VwZXJzZWNyZXQ=\n".repeat(50);

    let plain = store.put_blob(run, &secret, false)?;
    assert!(!plain.encrypted);
    assert_eq!(plain.len, secret.len() as u64);
    assert_eq!(plain.hash, *blake3::hash(&secret).as_bytes());
    assert_eq!(std::fs::read(blob_file(dir.path(), &plain.hash))?, secret);
    assert_eq!(store.get_blob(&plain)?, secret);

    let enc = store.put_blob(run, &secret, true)?;
    assert!(enc.encrypted);
    assert_ne!(enc.hash, plain.hash);
    let on_disk = std::fs::read(blob_file(dir.path(), &enc.hash))?;
    assert_eq!(
        *blake3::hash(&on_disk).as_bytes(),
        enc.hash,
        "named by the hash of the stored bytes"
    );
    assert!(
        !on_disk.windows(22).any(|w| w == b"password: c3VwZXJzZWNy"),
        "plaintext leaked"
    );
    assert_eq!(store.get_blob(&enc)?, secret);

    // No temp files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("blobs"))?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    assert_eq!(names.len(), 2);

    // Survives a reopen; the wrong key cannot read it.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.get_blob(&enc)?, secret);
    drop(store);
    let wrong = Store::open(StoreOptions {
        blob_key: Some(ferry_store::Key32::from_bytes([2; 32])),
        ..opts(dir.path())
    })?;
    assert!(matches!(
        wrong.get_blob(&enc),
        Err(Error::BlobIntegrity { .. })
    ));
    assert_eq!(wrong.get_blob(&plain)?, secret);
    drop(wrong);
    let keyless = Store::open(StoreOptions {
        blob_key: None,
        ..opts(dir.path())
    })?;
    assert!(matches!(
        keyless.put_blob(run, b"x", true),
        Err(Error::NoBlobKey)
    ));
    assert!(matches!(keyless.get_blob(&enc), Err(Error::NoBlobKey)));
    Ok(())
}

#[test]
fn tampered_and_missing_blobs_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    for encrypt in [false, true] {
        let blob = store.put_blob(run, b"resource bundle", encrypt)?;
        let path = blob_file(dir.path(), &blob.hash);
        let mut bytes = std::fs::read(&path)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes)?;
        match store.get_blob(&blob) {
            Err(e @ Error::BlobIntegrity { .. }) => {
                assert!(e.to_string().contains(&hex(&blob.hash)))
            }
            other => panic!("expected BlobIntegrity, got {other:?}"),
        }
        std::fs::remove_file(&path)?;
        assert!(matches!(
            store.get_blob(&blob),
            Err(Error::BlobMissing { .. })
        ));
    }
    Ok(())
}

#[tokio::test]
async fn retention_deletes_only_unshared_blobs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let (a, b) = (RunId::new(), RunId::new());
    store
        .append(a, 0, 1, vec![b"e".to_vec()], update("a", "P", false))
        .await?;
    let mine = store.put_blob(a, b"only a", false)?;
    let mine_enc = store.put_blob(a, b"only a, secret", true)?;
    let shared_a = store.put_blob(a, b"same bytes", false)?;
    let shared_b = store.put_blob(b, b"same bytes", false)?;
    assert_eq!(shared_a, shared_b, "content-addressed");

    assert_eq!(store.delete_run_blobs(a)?, 3);
    assert!(matches!(
        store.get_blob(&mine),
        Err(Error::BlobMissing { .. })
    ));
    assert!(matches!(
        store.get_blob(&mine_enc),
        Err(Error::BlobMissing { .. })
    ));
    assert_eq!(store.get_blob(&shared_b)?, b"same bytes", "b still owns it");
    assert_eq!(store.delete_run_blobs(a)?, 0);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.delete_run_blobs(b)?, 1);
    assert!(matches!(
        store.get_blob(&shared_b),
        Err(Error::BlobMissing { .. })
    ));
    Ok(())
}
