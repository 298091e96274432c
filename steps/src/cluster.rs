//! Reaching clusters: kubeconfig contexts to clients, discovery, and the
//! dynamic object operations the clone steps need, with kube's errors
//! classified for the engine's retry policy.
//!
//! kube retries 429/503/504 by itself when its config says so; the clients
//! made here keep that retry on (it honours Retry-After) and ferry's engine
//! retries what remains, so a permanent 429 costs kube's budget once per
//! engine attempt, never a product of two unbounded loops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_engine::StepError;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::{Client, Config};
use serde_json::Value;
use tokio::sync::RwLock;

/// The field manager of every server-side apply ferry sends.
pub const FIELD_MANAGER: &str = "ferry";

/// Classifies a kube error: retryable for throttling, server errors,
/// conflicts and lost connections; permanent for the rest.
pub fn classify(e: kube::Error, what: &str) -> StepError {
    match &e {
        kube::Error::Api(status) => {
            let retryable =
                matches!(status.code, 409 | 429 | 500..=599) && status.reason != "AlreadyExists";
            let msg = format!(
                "{what}: {} ({} {})",
                status.message, status.code, status.reason
            );
            if retryable {
                StepError::retryable(msg)
            } else {
                StepError::permanent(msg)
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            StepError::retryable(format!("{what}: connection: {e}"))
        }
        _ => StepError::permanent(format!("{what}: {e}")),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Clusters by kubeconfig context, read as kubectl reads them (several
/// files merged, first wins). Credentials stay here: never in a spec or log.
pub struct Clusters {
    kubeconfig: Kubeconfig,
    default_retry: bool,
    cache: Mutex<HashMap<String, Arc<Cluster>>>,
}

impl Clusters {
    /// Reads and merges the kubeconfig files.
    pub fn from_paths(paths: &[PathBuf]) -> Result<Self, StepError> {
        let mut merged: Option<Kubeconfig> = None;
        for p in paths {
            let kc = Kubeconfig::read_from(p).map_err(|e| {
                StepError::permanent(format!("cannot read kubeconfig {}: {e}", p.display()))
            })?;
            merged = Some(match merged {
                None => kc,
                Some(m) => m.merge(kc).map_err(|e| {
                    StepError::permanent(format!("cannot merge kubeconfig {}: {e}", p.display()))
                })?,
            });
        }
        // No kubeconfig at all is allowed: every context is then unknown,
        // and a clone naming one is told so.
        let kubeconfig = merged.unwrap_or_default();
        Ok(Clusters {
            kubeconfig,
            default_retry: true,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Turns kube's own retry of 429/503/504 off (fault tests use it so
    /// that the retries they count are ferry's).
    pub fn without_kube_retry(mut self) -> Self {
        self.default_retry = false;
        self
    }

    /// Whether `context` is in the kubeconfig.
    pub fn has_context(&self, context: &str) -> bool {
        self.kubeconfig.contexts.iter().any(|c| c.name == context)
    }

    /// The context names known.
    pub fn contexts(&self) -> Vec<String> {
        self.kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// The cluster of `context`.
    pub async fn get(&self, context: &str) -> Result<Arc<Cluster>, StepError> {
        if let Some(c) = self.cache.lock().expect("clusters lock").get(context) {
            return Ok(c.clone());
        }
        if !self.has_context(context) {
            return Err(StepError::permanent(format!(
                "context {context} is not in the kubeconfig (known: {}); name a context `kubectl config get-contexts` lists",
                self.contexts().join(", ")
            )));
        }
        let opts = KubeConfigOptions {
            context: Some(context.to_owned()),
            ..Default::default()
        };
        let mut config = Config::from_custom_kubeconfig(self.kubeconfig.clone(), &opts)
            .await
            .map_err(|e| StepError::permanent(format!("kubeconfig context {context}: {e}")))?;
        config.default_retry = self.default_retry;
        let client = Client::try_from(config)
            .map_err(|e| StepError::permanent(format!("client for {context}: {e}")))?;
        let cluster = Arc::new(Cluster::new(context, client));
        self.cache
            .lock()
            .expect("clusters lock")
            .insert(context.to_owned(), cluster.clone());
        Ok(cluster)
    }
}

/// One cluster: a client and its (refreshable) discovery.
pub struct Cluster {
    context: String,
    client: Client,
    discovery: RwLock<Option<Arc<Discovery>>>,
}

/// The outcome of a create-if-absent.
#[derive(Debug)]
pub enum Created {
    /// ferry created it.
    Created(Value),
    /// It was there already.
    Exists(Value),
}

impl Cluster {
    /// A cluster reached through `client`, named by its context.
    pub fn new(context: &str, client: Client) -> Self {
        Cluster {
            context: context.to_owned(),
            client,
            discovery: RwLock::new(None),
        }
    }

    /// The context name.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The kube client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Discovery, cached until [`Cluster::refresh`].
    pub async fn discovery(&self) -> Result<Arc<Discovery>, StepError> {
        if let Some(d) = self.discovery.read().await.as_ref() {
            return Ok(d.clone());
        }
        self.refresh().await
    }

    /// Runs discovery again (after CRDs were created, say).
    pub async fn refresh(&self) -> Result<Arc<Discovery>, StepError> {
        let d = Arc::new(
            Discovery::new(self.client.clone())
                .run()
                .await
                .map_err(|e| classify(e, &format!("discovery on {}", self.context)))?,
        );
        *self.discovery.write().await = Some(d.clone());
        Ok(d)
    }

    /// The API resource serving `api_version`/`kind`, refreshing discovery
    /// once if it is not known yet.
    pub async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, ApiCapabilities), StepError> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        if let Some(found) = self.discovery().await?.resolve_gvk(&gvk) {
            return Ok(found);
        }
        self.refresh().await?.resolve_gvk(&gvk).ok_or_else(|| {
            StepError::retryable(format!(
                "{kind} ({api_version}) is not served by cluster {}",
                self.context
            ))
        })
    }

    fn api(
        &self,
        ar: &ApiResource,
        caps: &ApiCapabilities,
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        match (caps.scope == Scope::Namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Every object of every listable namespaced resource in `namespace`
    /// (the preferred version of each group).
    pub async fn list_namespace(&self, namespace: &str) -> Result<Vec<Value>, StepError> {
        let discovery = self.discovery().await?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope != Scope::Namespaced
                    || !caps.supports_operation(verbs::LIST)
                    || ar.plural.contains('/')
                {
                    continue;
                }
                out.extend(self.list(&ar, &caps, Some(namespace), None).await?);
            }
        }
        Ok(out)
    }

    /// Every object of one cluster-scoped kind (empty if not served).
    pub async fn list_kind(
        &self,
        api_version: &str,
        kind: &str,
        label_selector: Option<&str>,
    ) -> Result<Vec<Value>, StepError> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        match self.discovery().await?.resolve_gvk(&gvk) {
            Some((ar, caps)) => self.list(&ar, &caps, None, label_selector).await,
            None => Ok(Vec::new()),
        }
    }

    /// Every object of one namespaced kind in `namespace` (empty if not served).
    pub async fn list_kind_in(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Vec<Value>, StepError> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        match self.discovery().await?.resolve_gvk(&gvk) {
            Some((ar, caps)) => self.list(&ar, &caps, Some(namespace), None).await,
            None => Ok(Vec::new()),
        }
    }

    async fn list(
        &self,
        ar: &ApiResource,
        caps: &ApiCapabilities,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<Value>, StepError> {
        let api = self.api(ar, caps, namespace);
        let mut lp = ListParams::default();
        if let Some(s) = selector {
            lp = lp.labels(s);
        }
        let list = api
            .list(&lp)
            .await
            .map_err(|e| classify(e, &format!("list {} on {}", ar.plural, self.context)))?;
        list.items
            .into_iter()
            .map(|mut o| {
                // Items of a list carry no apiVersion/kind: restore them.
                o.types = Some(kube::api::TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                serde_json::to_value(o)
                    .map_err(|e| StepError::permanent(format!("object does not serialize: {e}")))
            })
            .collect()
    }

    /// The object, if it exists.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, StepError> {
        let (ar, caps) = self.resource(api_version, kind).await?;
        match self.api(&ar, &caps, namespace).get_opt(name).await {
            Ok(Some(o)) => Ok(Some(to_value(o, &ar)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(classify(
                e,
                &format!("get {kind} {name} on {}", self.context),
            )),
        }
    }

    /// Creates `obj` unless an object of that name exists (which is
    /// returned untouched: the caller decides whether it may adopt it).
    pub async fn create_if_absent(&self, obj: &Value) -> Result<Created, StepError> {
        let (api_version, kind, namespace, name) = ids(obj)?;
        let (ar, caps) = self.resource(&api_version, &kind).await?;
        let api = self.api(&ar, &caps, namespace.as_deref());
        let dynamic: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| {
            StepError::permanent(format!("{kind} {name} is not a valid object: {e}"))
        })?;
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(o) => Ok(Created::Created(to_value(o, &ar)?)),
            Err(e) if is_status(&e, 409) => match api.get_opt(&name).await {
                Ok(Some(o)) => Ok(Created::Exists(to_value(o, &ar)?)),
                // Gone again between the two calls (being deleted): try later.
                Ok(None) => Err(StepError::retryable(format!(
                    "{kind} {name} exists but vanished; retrying"
                ))),
                Err(e) => Err(classify(
                    e,
                    &format!("get {kind} {name} on {}", self.context),
                )),
            },
            Err(e) => Err(classify(
                e,
                &format!("create {kind} {name} on {}", self.context),
            )),
        }
    }

    /// Server-side apply of `obj` (field manager `ferry`, forced).
    pub async fn apply(&self, obj: &Value) -> Result<Value, StepError> {
        let (api_version, kind, namespace, name) = ids(obj)?;
        let (ar, caps) = self.resource(&api_version, &kind).await?;
        let api = self.api(&ar, &caps, namespace.as_deref());
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let o = api
            .patch(&name, &pp, &Patch::Apply(obj))
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!(
                        "apply {kind} {}{name} on {}",
                        namespace.map(|n| format!("{n}/")).unwrap_or_default(),
                        self.context
                    ),
                )
            })?;
        to_value(o, &ar)
    }

    /// Deletes the object (background propagation); false if it was absent.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, StepError> {
        let (ar, caps) = match self.resource(api_version, kind).await {
            Ok(r) => r,
            // A kind no longer served has nothing left to delete.
            Err(_) => return Ok(false),
        };
        match self
            .api(&ar, &caps, namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(classify(
                e,
                &format!("delete {kind} {name} on {}", self.context),
            )),
        }
    }
}

fn to_value(mut o: DynamicObject, ar: &ApiResource) -> Result<Value, StepError> {
    if o.types.is_none() {
        o.types = Some(kube::api::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
    }
    serde_json::to_value(o)
        .map_err(|e| StepError::permanent(format!("object does not serialize: {e}")))
}

/// apiVersion, kind, namespace and name of an object.
pub fn ids(obj: &Value) -> Result<(String, String, Option<String>, String), StepError> {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let api_version =
        s("/apiVersion").ok_or_else(|| StepError::permanent("object without apiVersion"))?;
    let kind = s("/kind").ok_or_else(|| StepError::permanent("object without kind"))?;
    let name = s("/metadata/name")
        .ok_or_else(|| StepError::permanent(format!("{kind} without metadata.name")))?;
    Ok((api_version, kind, s("/metadata/namespace"), name))
}
