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
//! A cluster-wide default level (the plugin's `AdmissionConfiguration`,
//! `defaults.enforce`) is
//! [`SimOptions::pod_security_default`](crate::SimOptions::pod_security_default).
//! Pods the simulator's controllers make are checked too, as the API server
//! checks a ReplicaSet's: a refused one is not made (where a real
//! controller records a `FailedCreate` event).
//!
//! Simplified: AppArmor, SELinux, `/proc` mount types, sysctls and Windows
//! pods are not checked; `enforce-version` only names the version (the
//! checks are the latest's); exemptions are not modelled.

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
/// is the level where the namespace has no label (cluster-wide). A level
/// the plugin does not know is enforced as `restricted`, as it does.
pub fn refusal(labels: Option<&Value>, default: Option<&str>, pod: &Value) -> Option<String> {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let level = match label(ENFORCE_LABEL).or(default).unwrap_or("privileged") {
        "privileged" => return None,
        "baseline" => "baseline",
        _ => "restricted",
    };
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let found = violations(spec, level == "restricted");
    if found.is_empty() {
        return None;
    }
    let version = label(ENFORCE_VERSION_LABEL).unwrap_or("latest");
    Some(format!(
        "violates PodSecurity \"{level}:{version}\": {}",
        found.join(", ")
    ))
}

/// `container "a"` or `containers "a", "b"`, as the plugin names them.
fn containers_phrase(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    if names.len() == 1 {
        format!("container {}", quoted[0])
    } else {
        format!("containers {}", quoted.join(", "))
    }
}

/// The failed checks of `spec`, in the order of the plugin's check IDs
/// (allowPrivilegeEscalation, capabilities, hostNamespaces,
/// hostPathVolumes, hostPorts, privileged, restrictedVolumes,
/// runAsNonRoot, runAsUser, seccompProfile); under `restricted` its
/// versions of capabilities, volumes and seccomp replace baseline's.
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
    let failing = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        containers
            .iter()
            .filter(|c| f(c))
            .map(|c| name(c))
            .collect()
    };
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let volume_name = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };

    // allowPrivilegeEscalation
    if restricted {
        let bad = failing(&|c| sc(c, "allowPrivilegeEscalation") != Some(Value::Bool(false)));
        if !bad.is_empty() {
            out.push(format!(
                "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
                containers_phrase(&bad)
            ));
        }
    }

    // capabilities
    let added = |c: &Value| -> Vec<String> {
        c.pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let mut caps = Vec::new();
    if restricted {
        let no_drop = failing(&|c| {
            !c.pointer("/securityContext/capabilities/drop")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")))
        });
        if !no_drop.is_empty() {
            caps.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers_phrase(&no_drop)
            ));
        }
    }
    for c in &containers {
        let bad: Vec<String> = added(c)
            .into_iter()
            .filter(|cap| {
                if restricted {
                    cap != "NET_BIND_SERVICE"
                } else {
                    !BASELINE_CAPABILITIES.contains(&cap.as_str())
                }
            })
            .map(|cap| format!("\"{cap}\""))
            .collect();
        if !bad.is_empty() {
            caps.push(format!(
                "container \"{}\" must not include {} in securityContext.capabilities.add",
                name(c),
                bad.join(", ")
            ));
        }
    }
    if !caps.is_empty() {
        let what = if restricted {
            "unrestricted capabilities"
        } else {
            "non-default capabilities"
        };
        out.push(format!("{what} ({})", caps.join("; ")));
    }

    // hostNamespaces
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k) == Some(&Value::Bool(true)))
        .map(|k| format!("{k}=true"))
        .collect();
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }

    // hostPathVolumes (baseline; restrictedVolumes covers it under restricted)
    if !restricted {
        let bad: Vec<String> = volumes
            .iter()
            .filter(|v| v.get("hostPath").is_some())
            .map(|v| format!("\"{}\"", volume_name(v)))
            .collect();
        if !bad.is_empty() {
            let noun = if bad.len() == 1 { "volume" } else { "volumes" };
            out.push(format!("hostPath volumes ({noun} {})", bad.join(", ")));
        }
    }

    // hostPorts
    let mut ports = Vec::new();
    for c in &containers {
        let used: Vec<String> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_u64))
            .filter(|p| *p != 0)
            .map(|p| p.to_string())
            .collect();
        if !used.is_empty() {
            let noun = if used.len() == 1 {
                "hostPort"
            } else {
                "hostPorts"
            };
            ports.push(format!(
                "container \"{}\" uses {noun} {}",
                name(c),
                used.join(", ")
            ));
        }
    }
    if !ports.is_empty() {
        out.push(format!("hostPort ({})", ports.join("; ")));
    }

    // privileged
    let bad = failing(&|c| sc(c, "privileged") == Some(Value::Bool(true)));
    if !bad.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            containers_phrase(&bad)
        ));
    }

    // restrictedVolumes
    if restricted {
        for v in &volumes {
            let kind = v
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name"))
                .map(String::as_str)
                .unwrap_or("");
            if !RESTRICTED_VOLUMES.contains(&kind) {
                out.push(format!(
                    "restricted volume types (volume \"{}\" uses restricted volume type \"{kind}\")",
                    volume_name(v)
                ));
            }
        }
    }

    // runAsNonRoot
    if restricted {
        let mut parts = Vec::new();
        let pod_value = pod_sc("runAsNonRoot");
        if pod_value == Some(Value::Bool(false)) {
            parts.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let explicit_false = failing(&|c| sc(c, "runAsNonRoot") == Some(Value::Bool(false)));
        if !explicit_false.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                containers_phrase(&explicit_false)
            ));
        }
        if pod_value != Some(Value::Bool(true)) {
            let unset = failing(&|c| sc(c, "runAsNonRoot").is_none());
            if !unset.is_empty() {
                parts.push(format!(
                    "pod or {} must set securityContext.runAsNonRoot=true",
                    containers_phrase(&unset)
                ));
            }
        }
        if !parts.is_empty() {
            out.push(format!("runAsNonRoot != true ({})", parts.join("; ")));
        }
    }

    // runAsUser
    if restricted {
        let mut parts = Vec::new();
        if pod_sc("runAsUser").and_then(|u| u.as_u64()) == Some(0) {
            parts.push("pod must not set runAsUser=0".to_string());
        }
        let bad = failing(&|c| sc(c, "runAsUser").and_then(|u| u.as_u64()) == Some(0));
        if !bad.is_empty() {
            parts.push(format!(
                "{} must not set runAsUser=0",
                containers_phrase(&bad)
            ));
        }
        if !parts.is_empty() {
            out.push(format!("runAsUser=0 ({})", parts.join("; ")));
        }
    }

    // seccompProfile
    let kind_of = |v: Option<Value>| {
        v.and_then(|s| s.get("type").and_then(Value::as_str).map(str::to_string))
    };
    let pod_kind = kind_of(pod_sc("seccompProfile"));
    let mut parts = Vec::new();
    if pod_kind.as_deref() == Some("Unconfined") {
        parts.push(
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string(),
        );
    }
    let unconfined =
        failing(&|c| kind_of(sc(c, "seccompProfile")).as_deref() == Some("Unconfined"));
    if !unconfined.is_empty() {
        parts.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&unconfined)
        ));
    }
    if restricted && !matches!(pod_kind.as_deref(), Some("RuntimeDefault" | "Localhost")) {
        let unset = failing(&|c| kind_of(sc(c, "seccompProfile")).is_none());
        if !unset.is_empty() {
            parts.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&unset)
            ));
        }
    }
    if !parts.is_empty() {
        out.push(format!("seccompProfile ({})", parts.join("; ")));
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
        assert!(why.starts_with("violates PodSecurity \"baseline:v1.32\": non-default capabilities (container \"p\" must not include \"SYS_ADMIN\""), "{why}");
        assert!(
            why.ends_with(
                ", privileged (container \"p\" must not set securityContext.privileged=true)"
            ),
            "{why}"
        );
        assert!(why.contains("\"SYS_ADMIN\""), "{why}");

        // The checks in the plugin's order; two containers named together.
        let two = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "securityContext": {"privileged": true}},
            {"name": "b", "image": "x"}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}});
        let why = refusal(Some(&restricted), None, &two).expect("refused");
        let order = [
            "allowPrivilegeEscalation != false (containers \"a\", \"b\" must",
            "unrestricted capabilities",
            "privileged (container \"a\"",
            "restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")",
            "runAsNonRoot != true (pod or containers \"a\", \"b\" must",
            "seccompProfile",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|o| why.find(o).unwrap_or(usize::MAX))
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]) && at[5] != usize::MAX,
            "{why}"
        );
        assert!(
            !why.contains("hostPath volumes"),
            "restricted's check replaces it: {why}"
        );

        // Unconfined at pod level fails baseline whatever the containers say.
        let pod_unconfined = json!({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}},
            "containers": [{"name": "c", "image": "x",
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}]}});
        let why = refusal(Some(&baseline), None, &pod_unconfined).expect("refused");
        assert!(why.contains("seccompProfile (pod must not set"), "{why}");
        // A level the plugin does not know is enforced as restricted.
        let odd = json!({ENFORCE_LABEL: "strict"});
        assert!(
            refusal(Some(&odd), None, &root)
                .unwrap()
                .contains("\"restricted:latest\"")
        );
    }
}
