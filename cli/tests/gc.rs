//! `ferry gc`: the daemon deletes bucket chunks no manifest references, and
//! keeps every chunk a manifest still names.

mod common;

use common::{Daemon, Env, code, json_of, stderr};
use ferry_mover::{Bucket, BucketOptions, Upload, delete_manifests, download};

fn data(seed: u8, len: usize) -> Vec<u8> {
    // Incompressible-ish and distinct per seed, so chunks are not shared.
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn gc_deletes_only_unreferenced_chunks() {
    let env = Env::new();
    env.write_config("");
    let bucket_dir = env.root().join("bucket");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bucket = Bucket::open(
        &format!("file://{}", bucket_dir.display()),
        &BucketOptions {
            prefix: "ferry".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let (old, kept) = (data(1, 6 << 20), data(2, 6 << 20));
    rt.block_on(async {
        Upload::new(&bucket, "old-run", "data")
            .run(std::io::Cursor::new(old.clone()))
            .await
            .unwrap();
        Upload::new(&bucket, "keep-run", "data")
            .run(std::io::Cursor::new(kept.clone()))
            .await
            .unwrap();
        // The old run's manifests go (its compensation does this); its chunks stay until gc.
        delete_manifests(&bucket, "old-run").await.unwrap();
    });
    let d = Daemon::start(&env, &[]);

    let dry = d.ferry(&["gc", "--grace", "0s", "--dry-run", "-o", "json"]);
    assert_eq!(code(&dry), 0, "{}", stderr(&dry));
    let dry = json_of(&dry);
    assert!(dry["chunksDeleted"].as_u64().unwrap() > 0, "{dry}");
    // Young chunks are spared by the default grace period.
    let spared = json_of(&d.ferry(&["gc", "-o", "json"]));
    assert_eq!(spared["chunksDeleted"], 0, "{spared}");
    assert!(
        spared["chunksSparedYoung"].as_u64().unwrap() > 0,
        "{spared}"
    );

    let done = json_of(&d.ferry(&["gc", "--grace", "0s", "-o", "json"]));
    assert_eq!(done["chunksDeleted"], dry["chunksDeleted"], "{done}");
    assert_eq!(done["completed"], true);
    // What a manifest still names is intact, byte for byte.
    let mut out = Vec::new();
    rt.block_on(download(&bucket, "keep-run", "data", &mut out))
        .unwrap();
    assert_eq!(out, kept);
    let again = json_of(&d.ferry(&["gc", "--grace", "0s", "-o", "json"]));
    assert_eq!(again["chunksDeleted"], 0);
    // An unknown bucket is a bad request naming the field.
    let bad = d.ferry(&["gc", "--bucket", "nope"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(stderr(&bad).contains("nope"));
}
