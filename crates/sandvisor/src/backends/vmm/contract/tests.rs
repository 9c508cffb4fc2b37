//! The contract checker against the real specs, and small ones.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::json;

use super::{check_endpoint, ContractError, Spec, Violation, SPECS_DIR_ENV};
use crate::backends::vmm::rest::{Endpoint, Method};

fn ch() -> Spec {
    Spec::cloud_hypervisor().unwrap_or_else(|err| panic!("{err}"))
}

fn fc() -> Spec {
    Spec::firecracker().unwrap_or_else(|err| panic!("{err}"))
}

fn violations(result: Result<(), ContractError>) -> Vec<Violation> {
    match result {
        Err(ContractError::Body { violations, .. }) => violations,
        other => panic!("expected body violations, got {other:?}"),
    }
}

fn unknown(at: &str) -> Violation {
    Violation::UnknownField { at: at.to_owned() }
}

fn missing(at: &str) -> Violation {
    Violation::MissingField { at: at.to_owned() }
}

fn vm_config() -> serde_json::Value {
    json!({
        "payload": {"kernel": "/opt/guest.elf", "cmdline": "console=ttyS0"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 2},
        "memory": {"size": 268435456, "hotplug_size": 536870912},
        "disks": [{"path": "/var/lib/root.img", "readonly": true}],
        "serial": {"mode": "File", "file": "/run/serial.log"},
        "console": {"mode": "Off"},
    })
}

#[test]
fn contract_a_correct_cloud_hypervisor_body_passes() {
    let spec = ch();
    spec.check(Method::Put, "/api/v1/vm.create", Some(&vm_config()))
        .expect("vm.create");
    spec.check(
        Method::Put,
        "/api/v1/vm.resize",
        Some(&json!({"desired_vcpus": 2})),
    )
    .expect("vm.resize");
    spec.check(Method::Get, "/api/v1/vmm.ping", None)
        .expect("vmm.ping");
    spec.check(Method::Put, "/api/v1/vm.boot", None)
        .expect("vm.boot");
}

#[test]
fn contract_misspelt_fields_are_named_with_their_json_path() {
    let mut body = vm_config();
    body["payload"]["kernl"] = json!("/opt/guest.elf");
    body["disks"][0]["pth"] = json!("/var/lib/other.img");
    body["cpu"] = json!({});

    let found = violations(ch().check(Method::Put, "/api/v1/vm.create", Some(&body)));

    assert_eq!(
        found,
        vec![
            unknown("$.cpu"),
            unknown("$.disks[0].pth"),
            unknown("$.payload.kernl")
        ],
        "serde_json keeps object keys sorted"
    );
    let err = ch()
        .check(
            Method::Put,
            "/api/v1/vm.resize",
            Some(&json!({"desired_vcpu": 2})),
        )
        .expect_err("misspelt");
    assert!(
        err.to_string().contains("unknown field $.desired_vcpu"),
        "{err}"
    );
}

#[test]
fn contract_required_fields_must_be_there() {
    let found = violations(ch().check(
        Method::Put,
        "/api/v1/vm.create",
        Some(&json!({"cpus": {"boot_vcpus": 1}})),
    ));

    assert_eq!(
        found,
        vec![missing("$.cpus.max_vcpus"), missing("$.payload")]
    );
}

#[test]
fn contract_a_wrong_method_fails_naming_the_allowed_ones() {
    let err = ch()
        .check(Method::Get, "/api/v1/vm.create", None)
        .expect_err("vm.create is a PUT");

    match &err {
        ContractError::Method {
            method,
            template,
            allowed,
            ..
        } => assert_eq!(
            (*method, template.as_str(), allowed.as_str()),
            (Method::Get, "/vm.create", "PUT")
        ),
        other => panic!("expected Method, got {other:?}"),
    }
}

#[test]
fn contract_unknown_paths_and_paths_outside_the_base_fail() {
    let unknown = ch().check(Method::Put, "/api/v1/vm.frobnicate", None);
    let outside = ch().check(Method::Put, "/vm.create", Some(&vm_config()));
    let fc_unknown = fc().check(Method::Get, "/drives", None);

    assert!(
        matches!(&unknown, Err(ContractError::UnknownPath { path, .. }) if path == "/api/v1/vm.frobnicate"),
        "{unknown:?}"
    );
    assert!(
        matches!(&outside, Err(ContractError::OutsideBase { base, .. }) if base == "/api/v1"),
        "{outside:?}"
    );
    assert!(
        matches!(&fc_unknown, Err(ContractError::UnknownPath { .. })),
        "{fc_unknown:?}"
    );
}

#[test]
fn contract_firecracker_templates_match_one_segment() {
    let spec = fc();
    let drive =
        json!({"drive_id": "rootfs", "path_on_host": "/var/lib/root.img", "is_root_device": true});

    spec.check(Method::Put, "/drives/rootfs", Some(&drive))
        .expect("put drive");
    spec.check(Method::Get, "/", None).expect("describe");
    assert!(matches!(
        spec.check(Method::Put, "/drives/", Some(&drive)),
        Err(ContractError::UnknownPath { .. })
    ));
    assert!(matches!(
        spec.check(Method::Put, "/drives/a/b", Some(&drive)),
        Err(ContractError::UnknownPath { .. })
    ));
    // The binary takes DELETE /drives/{id} for hot-unplug; the spec does not list it.
    assert!(matches!(
        spec.check(Method::Delete, "/drives/rootfs", None),
        Err(ContractError::Method { .. })
    ));
}

#[test]
fn contract_firecracker_fields_types_and_enums() {
    let spec = fc();

    let drive = violations(spec.check(
        Method::Put,
        "/drives/rootfs",
        Some(&json!({"drive_id": "rootfs", "is_root_devise": true})),
    ));
    let machine = violations(spec.check(
        Method::Put,
        "/machine-config",
        Some(&json!({"vcpu_count": "2", "mem_size_mib": 256})),
    ));
    let action = violations(spec.check(
        Method::Put,
        "/actions",
        Some(&json!({"action_type": "InstanceStrat"})),
    ));

    assert_eq!(
        drive,
        vec![unknown("$.is_root_devise"), missing("$.is_root_device")]
    );
    assert_eq!(
        machine,
        vec![Violation::WrongType {
            at: "$.vcpu_count".into(),
            expected: "integer".into(),
            found: "a string"
        }]
    );
    assert_eq!(
        action,
        vec![Violation::NotInEnum {
            at: "$.action_type".into(),
            value: "InstanceStrat".into()
        }]
    );
}

#[test]
fn contract_bodies_where_none_go_and_none_where_one_must() {
    let extra = ch().check(Method::Put, "/api/v1/vm.boot", Some(&json!({})));
    let absent = fc().check(Method::Put, "/actions", None);

    assert!(
        matches!(extra, Err(ContractError::UnexpectedBody { .. })),
        "{extra:?}"
    );
    assert!(
        matches!(absent, Err(ContractError::MissingBody { .. })),
        "{absent:?}"
    );
}

const SMALL: &str = r##"
openapi: 3.0.1
servers:
  - url: http://localhost/base
paths:
  /things/{id}:
    put:
      requestBody:
        $ref: "#/components/requestBodies/Thing"
  /things/special:
    put:
      requestBody:
        content:
          application/json:
            schema:
              type: object
              properties:
                only:
                  type: string
components:
  requestBodies:
    Thing:
      required: true
      content:
        application/json:
          schema:
            $ref: "#/components/schemas/Thing"
  schemas:
    Named:
      type: object
      required: [name]
      properties:
        name:
          type: string
    Thing:
      allOf:
        - $ref: "#/components/schemas/Named"
        - type: object
          properties:
            labels:
              type: object
              additionalProperties:
                type: string
            extra:
              type: object
            parts:
              type: array
              items:
                $ref: "#/components/schemas/Named"
            loop:
              $ref: "#/components/schemas/Loop"
    Loop:
      $ref: "#/components/schemas/Loop"
"##;

#[test]
fn contract_allof_refs_and_additional_properties() {
    let spec = Spec::parse("small", SMALL).expect("parses");
    let good = json!({
        "name": "a",
        "labels": {"any": "string"},
        "extra": {"free": {"form": 1}},
        "parts": [{"name": "b"}],
    });

    spec.check(Method::Put, "/base/things/a", Some(&good))
        .expect("good thing");
    let found = violations(spec.check(
        Method::Put,
        "/base/things/a",
        Some(&json!({"labels": {"k": 1}, "parts": [{"name": "b"}, {"nam": "c"}]})),
    ));
    assert_eq!(
        found,
        vec![
            Violation::WrongType {
                at: "$.labels.k".into(),
                expected: "string".into(),
                found: "an integer"
            },
            unknown("$.parts[1].nam"),
            missing("$.parts[1].name"),
            missing("$.name"),
        ]
    );
    assert!(matches!(
        spec.check(Method::Put, "/base/things/a", None),
        Err(ContractError::MissingBody { .. })
    ));
}

#[test]
fn contract_a_literal_path_wins_over_a_template() {
    let spec = Spec::parse("small", SMALL).expect("parses");

    spec.check(
        Method::Put,
        "/base/things/special",
        Some(&json!({"only": "x"})),
    )
    .expect("the literal path's schema");
}

#[test]
fn contract_a_ref_loop_is_a_broken_spec() {
    let spec = Spec::parse("small", SMALL).expect("parses");

    let err = spec.check(
        Method::Put,
        "/base/things/a",
        Some(&json!({"name": "a", "loop": 1})),
    );

    assert!(
        matches!(&err, Err(ContractError::Ref { reference, .. }) if reference == "#/components/schemas/Loop"),
        "{err:?}"
    );
}

#[test]
fn contract_a_missing_spec_names_its_path() {
    let err = Spec::from_file(std::path::Path::new("/nonexistent/specs/firecracker.yaml"))
        .expect_err("missing");

    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/specs/firecracker.yaml"),
        "{message}"
    );
    assert!(message.contains(SPECS_DIR_ENV), "{message}");
}

#[test]
fn contract_a_document_without_paths_is_refused() {
    let err = Spec::parse("odd", "info: {title: x}\n").expect_err("not openapi");

    assert!(matches!(err, ContractError::Dialect { .. }), "{err:?}");
}

/// Firecracker's `PUT /machine-config`, as a backend would write it.
#[derive(Serialize)]
struct MachineConfig {
    vcpu_count: u32,
    mem_size_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    smt: Option<bool>,
}

impl Endpoint for MachineConfig {
    type Reply = ();
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/machine-config")
    }
}

/// Cloud Hypervisor's `vm.boot`, body-less.
#[derive(Serialize)]
struct Boot;

impl Endpoint for Boot {
    type Reply = ();
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/api/v1/vm.boot")
    }
    fn has_body(&self) -> bool {
        false
    }
}

#[test]
fn contract_check_endpoint_sends_what_the_client_would() {
    let config = MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 256,
        smt: Some(false),
    };

    check_endpoint(&fc(), &config).expect("machine-config");
    check_endpoint(&ch(), &Boot).expect("vm.boot");
    assert!(matches!(
        check_endpoint(&ch(), &config),
        Err(ContractError::OutsideBase { .. })
    ));
}
