//! Pod Security Admission, the API server's built-in `PodSecurity` plugin,
//! for pod creates: the namespace's `pod-security.kubernetes.io/enforce`
//! label (`privileged`, `baseline`, `restricted`; unlabelled is
//! `privileged`) and the checks of each level that a pod spec written by
//! hand or by a tool most often fails, with the API server's wording:
//!
//! ```text
//! pods "p" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false
//! (container "c" must set securityContext.allowPrivilegeEscalation=false), ...
//! ```
//!
//! Simplified: each container is named on its own (the API server groups
//! them, `containers "a", "b" must ...`); AppArmor, SELinux, `/proc` mount
//! types, sysctls and Windows pods are not checked; cluster-wide defaults
//! A cluster-wide default level (the plugin's `AdmissionConfiguration`,
//! `defaults.enforce`) is [`SimOptions::pod_security_default`](crate::SimOptions::pod_security_default);
//! exemptions are not modelled.
//! Pods the simulator's controllers make are checked too, as the API server
//! checks a ReplicaSet's: a refused one is not made (where a real
//! controller records a `FailedCreate` event).

use serde_json::Value;

/// The namespace label that sets the enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The namespace label that pins the enforced level's version.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";

/// Capabilities a container may add under `baseline`.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types `restricted` allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Why the namespace labelled `labels` refuses `pod` (its spec), as the API
/// server says it after `forbidden: `; `None` when it admits it. `default`
/// is the level where the namespace has no label (cluster-wide).
pub fn refusal(labels: Option<&Value>, default: Option<&str>, pod: &Value) -> Option<String> {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let level = label(ENFORCE_LABEL).or(default).unwrap_or("privileged");
    let restricted = match level {
        "restricted" => true,
        "baseline" => false,
        // privileged, or a value the API server would not have let onto the
        // namespace.
        _ => return None,
    };
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let found = violations(spec, restricted);
    if found.is_empty() {
        return None;
    }
    let version = label(ENFORCE_VERSION_LABEL).unwrap_or("latest");
    Some(format!(
        "violates PodSecurity \"{level}:{version}\": {}",
        found.join(", ")
    ))
}

fn violations(spec: &Value, restricted: bool) -> Vec<String> {
    let mut out = Vec::new();
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let name = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let sc = |c: &Value, field: &str| c.pointer(&format!("/securityContext/{field}")).cloned();
    let pod_sc = |field: &str| spec.pointer(&format!("/securityContext/{field}")).cloned();

    // baseline
    for c in &containers {
        if sc(c, "privileged") == Some(Value::Bool(true)) {
            out.push(format!(
                "privileged (container \"{}\" must not set securityContext.privileged=true)",
                name(c)
            ));
        }
    }
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k) == Some(&Value::Bool(true)))
        .map(|k| format!("{k}=true"))
        .collect();
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    for v in &volumes {
        if v.get("hostPath").is_some() {
            out.push(format!(
                "hostPath volumes (volume \"{}\")",
                v.get("name").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    for c in &containers {
        let added: Vec<&str> = c
            .pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for cap in added {
            let allowed = if restricted {
                cap == "NET_BIND_SERVICE"
            } else {
                BASELINE_CAPABILITIES.contains(&cap)
            };
            if !allowed && !restricted {
                out.push(format!(
                    "non-default capabilities (container \"{}\" must not include \"{cap}\" in securityContext.capabilities.add)",
                    name(c)
                ));
            }
            if !allowed && restricted {
                out.push(format!(
                    "unrestricted capabilities (container \"{}\" must not include \"{cap}\" in securityContext.capabilities.add)",
                    name(c)
                ));
            }
        }
        for port in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = port
                .get("hostPort")
                .and_then(Value::as_u64)
                .filter(|p| *p != 0)
            {
                out.push(format!(
                    "hostPort (container \"{}\" uses hostPort {p})",
                    name(c)
                ));
            }
        }
    }
    let seccomp = |v: Option<Value>| {
        v.and_then(|s| s.get("type").and_then(Value::as_str).map(str::to_string))
    };
    let pod_seccomp = seccomp(pod_sc("seccompProfile"));
    for c in &containers {
        let own = seccomp(sc(c, "seccompProfile"));
        if own.as_deref().or(pod_seccomp.as_deref()) == Some("Unconfined") {
            out.push(format!(
                "seccompProfile (pod or container \"{}\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
                name(c)
            ));
        }
    }
    if !restricted {
        return out;
    }

    // restricted
    for v in &volumes {
        let kind = v
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "name"))
            .map(String::as_str)
            .unwrap_or("");
        if !RESTRICTED_VOLUMES.contains(&kind) && kind != "hostPath" {
            out.push(format!(
                "restricted volume types (volume \"{}\" uses restricted volume type \"{kind}\")",
                v.get("name").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    for c in &containers {
        if sc(c, "allowPrivilegeEscalation") != Some(Value::Bool(false)) {
            out.push(format!(
                "allowPrivilegeEscalation != false (container \"{}\" must set securityContext.allowPrivilegeEscalation=false)",
                name(c)
            ));
        }
        let drops_all = c
            .pointer("/securityContext/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
        if !drops_all {
            out.push(format!(
                "unrestricted capabilities (container \"{}\" must set securityContext.capabilities.drop=[\"ALL\"])",
                name(c)
            ));
        }
    }
    let pod_non_root = pod_sc("runAsNonRoot") == Some(Value::Bool(true));
    for c in &containers {
        match sc(c, "runAsNonRoot") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => out.push(format!(
                "runAsNonRoot != true (container \"{}\" must not set securityContext.runAsNonRoot=false)",
                name(c)
            )),
            _ if pod_non_root => {}
            _ => out.push(format!(
                "runAsNonRoot != true (pod or container \"{}\" must set securityContext.runAsNonRoot=true)",
                name(c)
            )),
        }
    }
    if pod_sc("runAsUser").and_then(|u| u.as_u64()) == Some(0) {
        out.push("runAsUser=0 (pod must not set runAsUser=0)".into());
    }
    for c in &containers {
        if sc(c, "runAsUser").and_then(|u| u.as_u64()) == Some(0) {
            out.push(format!(
                "runAsUser=0 (container \"{}\" must not set runAsUser=0)",
                name(c)
            ));
        }
        let own = seccomp(sc(c, "seccompProfile"));
        let effective = own.or_else(|| pod_seccomp.clone());
        if !matches!(
            effective.as_deref(),
            Some("RuntimeDefault" | "Localhost" | "Unconfined")
        ) {
            out.push(format!(
                "seccompProfile (pod or container \"{}\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
                name(c)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: Value) -> Value {
        json!({"spec": {"containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]}})
    }

    #[test]
    fn levels_refuse_what_they_forbid_and_nothing_else() {
        let root = pod(json!({"name": "mover", "image": "debian:12-slim"}));
        assert_eq!(refusal(None, None, &root), None, "unlabelled is privileged");
        let baseline = json!({ENFORCE_LABEL: "baseline"});
        assert_eq!(refusal(Some(&baseline), None, &root), None);
        assert!(
            refusal(None, Some("restricted"), &root).is_some(),
            "the cluster's default"
        );
        assert_eq!(
            refusal(Some(&baseline), Some("restricted"), &root),
            None,
            "the label wins"
        );
        let restricted = json!({ENFORCE_LABEL: "restricted"});
        let why = refusal(Some(&restricted), None, &root).expect("refused");
        assert!(
            why.starts_with("violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"mover\""),
            "{why}"
        );
        for part in [
            "unrestricted capabilities",
            "runAsNonRoot != true",
            "seccompProfile",
        ] {
            assert!(why.contains(part), "{part}: {why}");
        }

        let hardened = pod(json!({"name": "app", "image": "x", "securityContext": {
            "allowPrivilegeEscalation": false, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "seccompProfile": {"type": "RuntimeDefault"}}}));
        assert_eq!(refusal(Some(&restricted), None, &hardened), None);

        let privileged = pod(json!({"name": "p", "image": "x",
            "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}));
        let pinned = json!({ENFORCE_LABEL: "baseline", ENFORCE_VERSION_LABEL: "v1.32"});
        let why = refusal(Some(&pinned), None, &privileged).expect("refused");
        assert!(
            why.starts_with("violates PodSecurity \"baseline:v1.32\": privileged (container \"p\""),
            "{why}"
        );
        assert!(why.contains("\"SYS_ADMIN\""), "{why}");
    }
}
