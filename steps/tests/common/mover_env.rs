//! Two simulated clusters (`prod`, `staging`), ferry's engine on a store in
//! a temp dir and a bucket: the world of the data mover's clone-level tests
//! and of its clone benchmark. The mover's own test helpers (trees, store
//! wrappers, the in-process S3) are included from `steps/mover/tests/common`.
#![allow(dead_code, missing_docs)]

#[path = "../../mover/tests/common/s3.rs"]
pub mod s3;
#[path = "../../mover/tests/common/stores.rs"]
pub mod stores;
#[path = "../../mover/tests/common/tree.rs"]
pub mod tree;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_engine::{Engine, EngineOptions, Event, Phase, Registry, RetryPolicy, StepId};
use ferry_mover::{Bucket, BucketOptions, ChunkerParams};
use ferry_sim::{SimCluster, SimOptions};
use ferry_steps::cluster::{Cluster, Clusters};
use ferry_steps::preflight::PreflightConfig;
use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::{CloneEnv, CloneWorkflow, MoverCheckpoint, MoverOutput, MoverSettings};
use ferry_store::{Key32, RunId, Store, StoreOptions};
use serde_json::{Value, json};

/// The bucket's name in the daemon's config (and the default bucket).
pub const BUCKET: &str = "local";

/// Small chunks (16/64/256 KiB), so that a volume of a few MB has many and
/// what one changed file costs can be told apart from the whole.
pub const SMALL_CHUNKS: ChunkerParams = ChunkerParams {
    min: 16 << 10,
    avg: 64 << 10,
    max: 256 << 10,
};

/// Quick bucket retries, as the mover's tests use.
pub fn fast_retry() -> ferry_mover::RetryPolicy {
    ferry_mover::RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
    }
}

/// A `file://` bucket in `dir`, prefix `ferry`.
pub fn file_bucket(dir: &Path) -> Bucket {
    std::fs::create_dir_all(dir).unwrap();
    Bucket::open(
        &format!("file://{}", dir.display()),
        &BucketOptions {
            prefix: "ferry".into(),
            retry: fast_retry(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The mover settings of the tests: small chunks, a checkpoint after every
/// chunk, the given transfer limit.
pub fn small_chunk_settings(transfers: usize) -> MoverSettings {
    let mut m = MoverSettings::with_transfer_limit(transfers);
    m.upload.chunker = SMALL_CHUNKS;
    m.upload.checkpoint_interval = Duration::ZERO;
    m
}

pub async fn sim(name: &str, data_dir: Option<&Path>) -> SimCluster {
    SimCluster::start(SimOptions {
        name: name.into(),
        data_dir: data_dir.map(Path::to_path_buf),
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

pub fn clusters(sims: &[&SimCluster]) -> Clusters {
    let paths: Vec<PathBuf> = sims
        .iter()
        .map(|s| s.kubeconfig_path().to_owned())
        .collect();
    Clusters::from_paths(&paths).unwrap()
}

pub async fn apply_yaml(cluster: &Cluster, yaml: &str) {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            cluster.apply(&v).await.unwrap();
        }
    }
}

/// A namespace with PVCs `(name, storage class, access mode)`.
pub fn volumes_yaml(ns: &str, pvcs: &[(&str, &str, &str)]) -> String {
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
    for (name, class, mode) in pvcs {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{accessModes: [{mode}], storageClassName: {class}, resources: {{requests: {{storage: 1Gi}}}}}}\n"
        ));
    }
    y
}

/// The local directory of the volume bound to PVC `ns/pvc`, once bound.
pub async fn pv_dir(c: &Cluster, ns: &str, pvc: &str) -> PathBuf {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(claim) = c
            .get("v1", "PersistentVolumeClaim", Some(ns), pvc)
            .await
            .unwrap()
            && claim.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")
        {
            let pv_name = claim["spec"]["volumeName"].as_str().unwrap().to_owned();
            let pv = c
                .get("v1", "PersistentVolume", None, &pv_name)
                .await
                .unwrap()
                .unwrap();
            if let Some(p) = pv
                .pointer("/metadata/annotations/sim.ferry.dev~1path")
                .and_then(Value::as_str)
            {
                return PathBuf::from(p);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for PVC {ns}/{pvc} to bind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cross-cluster clone `prod` → `staging` of namespace `src_ns` as `dst_ns`.
pub fn spec(name: &str, src_ns: &str, dst_ns: &str, allow_live_copy: bool) -> CloneSpec {
    CloneSpec::from_json(
        &json!({"name": name, "sourceContext": "prod", "destinationContext": "staging",
            "namespaces": [{"source": src_ns, "destination": dst_ns}],
            "allowLiveCopy": allow_live_copy})
        .to_string(),
    )
    .unwrap()
}

/// ferry's engine over `clusters` with a store in `state_dir`, the clone
/// workflow registered, `bucket` as the default bucket [`BUCKET`].
pub fn engine(
    clusters: Clusters,
    bucket: Bucket,
    mover: MoverSettings,
    state_dir: &Path,
) -> Engine {
    engine_with_image(
        clusters,
        bucket,
        mover,
        state_dir,
        ferry_steps::workflow::DEFAULT_MOVER_IMAGE,
    )
}

/// The clone workflow's environment over `clusters`, `bucket` the default
/// bucket [`BUCKET`], mover pods of `image`.
pub fn clone_env(
    clusters: Clusters,
    bucket: Bucket,
    mover: MoverSettings,
    image: &str,
) -> CloneEnv {
    CloneEnv {
        clusters,
        preflight: PreflightConfig::from_settings(
            Vec::new(),
            None,
            [BUCKET.to_owned()].into(),
            Some(BUCKET.into()),
            true,
        )
        .unwrap(),
        health_poll: Duration::from_millis(50),
        buckets: [(BUCKET.to_owned(), bucket)].into(),
        mover_image: image.into(),
        mover,
    }
}

/// [`engine`], with mover pods of `image`.
pub fn engine_with_image(
    clusters: Clusters,
    bucket: Bucket,
    mover: MoverSettings,
    state_dir: &Path,
    image: &str,
) -> Engine {
    let store = Store::open(StoreOptions {
        dir: state_dir.to_path_buf(),
        mac_key: Key32::from_bytes([1; 32]),
        blob_key: Some(Key32::from_bytes([2; 32])),
    })
    .unwrap();
    let env = clone_env(clusters, bucket, mover, image);
    let mut registry = Registry::new();
    CloneWorkflow::new(env).register(&mut registry);
    let opts = EngineOptions {
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        },
        ..EngineOptions::default()
    };
    Engine::new(store, registry, opts)
}

/// Two simulated clusters, ferry's engine over them, one bucket.
pub struct World {
    pub src: SimCluster,
    pub dst: SimCluster,
    pub engine: Engine,
    pub bucket: Bucket,
    pub mover: MoverSettings,
    /// The store's directory.
    pub tmp: tempfile::TempDir,
}

impl World {
    /// Starts both simulators (their data in temp dirs) and an engine whose
    /// clones use `bucket` as the default bucket.
    pub async fn start(bucket: Bucket, mover: MoverSettings) -> World {
        Self::start_with_image(bucket, mover, ferry_steps::workflow::DEFAULT_MOVER_IMAGE).await
    }

    /// [`World::start`], with mover pods of `image`.
    pub async fn start_with_image(bucket: Bucket, mover: MoverSettings, image: &str) -> World {
        let (src, dst) = (sim("prod", None).await, sim("staging", None).await);
        Self::with_sims(src, dst, bucket, mover, image)
    }

    /// [`World::start`] over the given source (`prod`) and destination
    /// (`staging`) simulators.
    pub fn with_sims(
        src: SimCluster,
        dst: SimCluster,
        bucket: Bucket,
        mover: MoverSettings,
        image: &str,
    ) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let engine = engine_with_image(
            clusters(&[&src, &dst]),
            bucket.clone(),
            mover.clone(),
            &tmp.path().join("state"),
            image,
        );
        World {
            src,
            dst,
            engine,
            bucket,
            mover,
            tmp,
        }
    }

    pub async fn source(&self) -> std::sync::Arc<Cluster> {
        clusters(&[&self.src]).get("prod").await.unwrap()
    }

    pub async fn destination(&self) -> std::sync::Arc<Cluster> {
        clusters(&[&self.dst]).get("staging").await.unwrap()
    }

    /// The local directory of the destination's volume `ns/pvc`, once bound.
    pub async fn dst_pv(&self, ns: &str, pvc: &str) -> PathBuf {
        let c = self.destination().await;
        pv_dir(&c, ns, pvc).await
    }

    /// The local directory of the source's volume `ns/pvc`, once bound.
    pub async fn src_pv(&self, ns: &str, pvc: &str) -> PathBuf {
        let c = self.source().await;
        pv_dir(&c, ns, pvc).await
    }

    /// Submits `spec` and waits (up to `limit`) for the run's end; on a
    /// timeout, panics with every step's status and last error.
    pub async fn clone_within(&self, spec: &CloneSpec, limit: Duration) -> (RunId, Phase) {
        let run = self
            .engine
            .submit(CloneWorkflow::submission(spec).unwrap())
            .await
            .unwrap();
        match tokio::time::timeout(limit, self.engine.wait(run)).await {
            Ok(phase) => (run, phase.unwrap()),
            Err(_) => panic!("clone {} stuck: {}", spec.name, self.steps(run)),
        }
    }

    /// [`World::clone_within`] two minutes.
    pub async fn clone(&self, spec: &CloneSpec) -> (RunId, Phase) {
        self.clone_within(spec, Duration::from_secs(120)).await
    }

    /// Every step's id, status and last error, for assertion messages.
    pub fn steps(&self, run: RunId) -> String {
        let state = self.engine.load(run).unwrap();
        state
            .steps
            .values()
            .map(|st| format!("\n  {} {:?} {:?}", st.decl.id.0, st.status, st.last_error))
            .collect()
    }

    pub fn events(&self, run: RunId) -> Vec<Event> {
        self.engine
            .store()
            .read(run, 0)
            .unwrap()
            .iter()
            .map(|e| Event::decode(&e.event).unwrap())
            .collect()
    }

    /// The recorded output of the mover step of `ns/pvc` (destination namespace).
    pub fn output(&self, run: RunId, dst_ns: &str, pvc: &str) -> MoverOutput {
        let state = self.engine.load(run).unwrap();
        state.steps[&StepId(format!("volume/{dst_ns}/{pvc}"))]
            .output
            .as_ref()
            .expect("the mover step succeeded")
            .decode()
            .unwrap()
    }

    /// Every checkpoint the mover step of `dst_ns/pvc` recorded, in order.
    pub fn checkpoints(&self, run: RunId, dst_ns: &str, pvc: &str) -> Vec<MoverCheckpoint> {
        let id = format!("volume/{dst_ns}/{pvc}");
        self.events(run)
            .into_iter()
            .filter_map(|e| match e {
                Event::StepProgress { step, checkpoint } if step.0 == id => {
                    Some(checkpoint.decode().unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// Ends both simulators.
    pub async fn stop(self) {
        self.src.stop().await;
        self.dst.stop().await;
    }
}
