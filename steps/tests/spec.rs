//! Spec parsing and validation: every problem found, each naming its field.

mod common;

use ferry_steps::error::Error;
use ferry_steps::spec::{
    CloneSpec, HookStage, OnError, parse_mapping, parse_namespace_mapping,
    parse_storage_class_mapping,
};
use serde_json::json;

fn spec(v: serde_json::Value) -> CloneSpec {
    serde_json::from_value(v).expect("shape parses")
}

fn fields(s: &CloneSpec) -> Vec<String> {
    s.problems().into_iter().map(|p| p.field).collect()
}

#[test]
fn the_fixture_spec_is_valid_and_round_trips() {
    let s = common::in_cluster_spec();
    assert!(s.in_cluster());
    assert_eq!(s.destination_of("shop").as_deref(), Some("shop-copy"));
    assert_eq!(s.destination_class("fast"), "fast-retain");
    assert_eq!(s.destination_class("shared"), "shared");
    assert_eq!(s.hooks[0].on_error(), OnError::Fail);
    assert_eq!(s.hooks[1].on_error(), OnError::Continue);
    let back: CloneSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    assert_eq!(s.health_deadline_seconds, 900);
}

#[test]
fn every_problem_is_reported_with_its_field_and_a_fix() {
    let s = spec(json!({
        "name": "Shop_Copy",
        "sourceContext": "prod",
        "destinationContext": "prod",
        "namespaces": [
            {"source": "shop"},
            {"source": "shop", "destination": "Bad_NS"},
            {"source": "cart", "destination": "cart"},
            {"source": "web", "destination": "shop"}
        ],
        "storageClasses": [{"source": "gp3", "destination": "standard"}, {"source": "gp3", "destination": "x"}],
        "exclude": [{"kind": "ConfigMap", "labelSelector": "app in web"}, {}],
        "bucket": "",
        "hooks": [
            {"name": "freeze", "stage": "pre", "command": [], "containerImage": "(postgres"},
            {"name": "freeze", "stage": "pre", "command": ["true"], "timeoutSeconds": 0},
            {"name": "warm", "stage": "post", "command": ["true"], "thawCommand": ["x"], "podSelector": "a==b==c"}
        ],
        "transforms": [
            {"selector": {"kind": "Ingress", "name": "(", "namespace": "elsewhere"},
             "patch": [{"op": "replace", "path": "spec/x", "value": 1},
                       {"op": "replace", "path": "/metadata/namespace", "value": "x"},
                       {"op": "remove", "path": "/metadata/labels/ferry.dev~1run"}]},
            {"selector": {}, "patch": []}
        ],
        "healthDeadlineSeconds": 0
    }));
    let got = fields(&s);
    for want in [
        "name",
        "namespaces[0].destination",
        "namespaces[1].source",
        "namespaces[1].destination",
        "namespaces[2].destination",
        "namespaces[3].destination",
        "storageClasses[1].source",
        "exclude[0].labelSelector",
        "exclude[1]",
        "bucket",
        "hooks[0].command",
        "hooks[0].containerImage",
        "hooks[1].name",
        "hooks[1].timeoutSeconds",
        "hooks[2].thawCommand",
        "hooks[2].podSelector",
        "transforms[0].selector.name",
        "transforms[0].selector.namespace",
        "transforms[0].patch[0].path",
        "transforms[0].patch[1].path",
        "transforms[0].patch[2].path",
        "transforms[1].patch",
        "healthDeadlineSeconds",
    ] {
        assert!(got.contains(&want.to_owned()), "missing {want} in {got:#?}");
    }
    for p in s.problems() {
        assert!(!p.problem.is_empty() && !p.fix.is_empty(), "{p}");
    }
    let err = s.validate().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidSpec(ref v) if v.len() == got.len()));
    assert!(msg.contains("namespaces[0].destination: is missing, and an in-cluster clone cannot reuse the source namespace shop"), "{msg}");
}

#[test]
fn cross_cluster_may_keep_namespace_names() {
    let s = spec(
        json!({"name": "shop", "sourceContext": "prod", "destinationContext": "staging", "namespaces": [{"source": "shop"}]}),
    );
    assert_eq!(s.problems(), vec![]);
    assert_eq!(s.destination_of("shop").as_deref(), Some("shop"));
    assert_eq!(s.health_deadline_seconds, 600);
}

#[test]
fn empty_namespaces_and_contexts_are_named() {
    let s = spec(
        json!({"name": "x", "sourceContext": "", "destinationContext": " ", "namespaces": []}),
    );
    assert_eq!(
        fields(&s),
        vec!["sourceContext", "destinationContext", "namespaces"]
    );
}

#[test]
fn unknown_fields_such_as_credentials_are_rejected() {
    let with_token = r#"{"name":"x","sourceContext":"a","destinationContext":"b","namespaces":[{"source":"s"}],"token":"abc"}"#;
    let err = CloneSpec::from_json(with_token).unwrap_err();
    assert!(err.to_string().contains("invalid JSON"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("unknown field `token`"), "{source}");
}

#[test]
fn cli_mapping_forms() {
    assert_eq!(parse_mapping("shop").unwrap(), ("shop".into(), None));
    assert_eq!(
        parse_mapping("shop:shop-copy").unwrap(),
        ("shop".into(), Some("shop-copy".into()))
    );
    assert_eq!(
        parse_mapping("gp3=standard").unwrap(),
        ("gp3".into(), Some("standard".into()))
    );
    assert!(parse_mapping(":x").is_err());
    assert!(parse_mapping("x:").is_err());
    assert!(parse_mapping("a:b:c").is_err());
    assert_eq!(
        parse_namespace_mapping("a=b")
            .unwrap()
            .destination
            .as_deref(),
        Some("b")
    );
    assert_eq!(
        parse_storage_class_mapping("gp3:standard")
            .unwrap()
            .destination,
        "standard"
    );
    let err = parse_storage_class_mapping("gp3").unwrap_err().to_string();
    assert!(err.contains("needs a destination"), "{err}");
}

#[test]
fn hook_stage_and_on_error_defaults() {
    let s = common::in_cluster_spec();
    assert_eq!(s.hooks[0].stage, HookStage::Pre);
    assert_eq!(s.hooks[1].timeout_seconds, 25 * 60);
}

#[test]
fn a_daemons_hook_defaults_fill_only_what_a_hook_leaves_out() {
    use ferry_steps::spec::{HookDefaults, HookStage, OnError};
    let mut raw = serde_json::json!({
    "name": "c", "sourceContext": "a", "destinationContext": "b",
    "namespaces": [{"source": "x", "destination": "y"}],
    "hooks": [
        {"name": "q", "stage": "pre", "command": ["sync"]},
        {"name": "w", "stage": "post", "command": ["true"], "timeoutSeconds": 7, "onError": "fail"}
    ]});
    HookDefaults {
        timeout_seconds: Some(300),
        on_error: Some(OnError::Continue),
    }
    .fill(&mut raw);
    let s = spec(raw);
    assert_eq!(s.hooks[0].stage, HookStage::Pre);
    assert_eq!(s.hooks[0].timeout_seconds, 300);
    assert_eq!(s.hooks[0].on_error(), OnError::Continue);
    assert_eq!(s.hooks[1].timeout_seconds, 7, "a hook's own value wins");
    assert_eq!(s.hooks[1].on_error(), OnError::Fail);
    // No defaults configured: the spec's own defaults.
    let mut raw = serde_json::json!({
        "name": "c", "sourceContext": "a", "destinationContext": "b",
        "namespaces": [{"source": "x", "destination": "y"}],
        "hooks": [{"name": "w", "stage": "post", "command": ["true"]}]});
    HookDefaults::default().fill(&mut raw);
    let s = spec(raw);
    assert_eq!(s.hooks[0].timeout_seconds, 1500);
    assert_eq!(s.hooks[0].on_error(), OnError::Continue);
}
