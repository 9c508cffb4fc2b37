//! Checks requests against the VMMs' published API contracts.
//!
//! Tests of the Cloud Hypervisor and Firecracker backends send their
//! [`Endpoint`]s to fakes; this module keeps the fakes honest by checking
//! each request against the OpenAPI document its VMM publishes (Cloud
//! Hypervisor's is OpenAPI 3, Firecracker's is Swagger 2): the path exists
//! (templates such as `/drives/{drive_id}` match any one segment), the
//! method exists on it, and the body names only properties of its schema
//! (through `$ref` and `allOf`, into nested objects and arrays), has every
//! required one, and has the declared JSON types and enum values.
//!
//! The documents live in `shared/specs` beside the repository, or in the
//! folder [`SPECS_DIR_ENV`] names.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use super::rest::{Endpoint, Method};
use schema::Checker;

/// The environment variable naming the folder of the spec files.
pub const SPECS_DIR_ENV: &str = "SANDVISOR_SPECS_DIR";

/// How deep `$ref`s may chain before the document is taken as broken.
const MAX_REF_DEPTH: usize = 32;

/// Errors from loading a spec, and contract violations.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The spec file cannot be read.
    #[error("cannot read API spec {path:?} (set {SPECS_DIR_ENV} to the folder holding it)")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The spec file is not YAML.
    #[error("cannot parse API spec {path:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: serde_norway::Error,
    },
    /// The spec is neither OpenAPI 3 nor Swagger 2, or lacks `paths`.
    #[error("{spec}: not an OpenAPI 3 or Swagger 2 document with paths")]
    Dialect {
        /// The spec.
        spec: String,
    },
    /// A `$ref` points nowhere, or `$ref`s chain in a loop.
    #[error("{spec}: broken $ref {reference}")]
    Ref {
        /// The spec.
        spec: String,
        /// The reference.
        reference: String,
    },
    /// The request path is not under the API's base path.
    #[error("{spec}: {path} is not under the API base {base}")]
    OutsideBase {
        /// The spec.
        spec: String,
        /// The request path.
        path: String,
        /// The base, such as `/api/v1`.
        base: String,
    },
    /// No path of the spec matches.
    #[error("{spec}: no path matches {path}")]
    UnknownPath {
        /// The spec.
        spec: String,
        /// The request path.
        path: String,
    },
    /// The path has no such method.
    #[error("{spec}: {method} is not allowed on {template} (allowed: {allowed})")]
    Method {
        /// The spec.
        spec: String,
        /// The method.
        method: Method,
        /// The spec's path that matched.
        template: String,
        /// The methods it has.
        allowed: String,
    },
    /// A body on an operation that takes none.
    #[error("{spec}: {method} {path} takes no body")]
    UnexpectedBody {
        /// The spec.
        spec: String,
        /// The method.
        method: Method,
        /// The request path.
        path: String,
    },
    /// No body on an operation that requires one.
    #[error("{spec}: {method} {path} needs a body")]
    MissingBody {
        /// The spec.
        spec: String,
        /// The method.
        method: Method,
        /// The request path.
        path: String,
    },
    /// The body breaks its schema.
    #[error("{spec}: {method} {path}: {}", list(violations))]
    Body {
        /// The spec.
        spec: String,
        /// The method.
        method: Method,
        /// The request path.
        path: String,
        /// Each place the body breaks the schema.
        violations: Vec<Violation>,
    },
    /// The endpoint's body does not encode.
    #[error("cannot encode the body of {method} {path}")]
    Encode {
        /// The method.
        method: Method,
        /// The request path.
        path: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// One place a body breaks its schema; `at` is a JSON path such as
/// `$.disks[0].path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A field the schema does not have.
    UnknownField {
        /// Where.
        at: String,
    },
    /// A required field is absent.
    MissingField {
        /// Where.
        at: String,
    },
    /// A value of another JSON type than the schema's.
    WrongType {
        /// Where.
        at: String,
        /// The schema's type.
        expected: String,
        /// The value's JSON type.
        found: &'static str,
    },
    /// A string the schema's `enum` does not list.
    NotInEnum {
        /// Where.
        at: String,
        /// The value.
        value: String,
    },
    /// A value that matches none of a `oneOf`/`anyOf`.
    NoVariant {
        /// Where.
        at: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnknownField { at } => write!(f, "unknown field {at}"),
            Violation::MissingField { at } => write!(f, "missing required field {at}"),
            Violation::WrongType {
                at,
                expected,
                found,
            } => write!(f, "{at} is {found}, not {expected}"),
            Violation::NotInEnum { at, value } => {
                write!(f, "{at} is {value:?}, not one of the enum")
            }
            Violation::NoVariant { at } => write!(f, "{at} matches none of the variants"),
        }
    }
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which OpenAPI version a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// `openapi: 3.x`: `servers`, `requestBody`, `#/components/schemas`.
    OpenApi3,
    /// `swagger: "2.0"`: `basePath`, `in: body` parameters, `#/definitions`.
    Swagger2,
}

/// A VMM's API contract.
#[derive(Debug)]
pub struct Spec {
    name: String,
    dialect: Dialect,
    /// The path every request path starts with, without a trailing `/`.
    base: String,
    doc: Yaml,
}

/// The folder holding the spec files: [`SPECS_DIR_ENV`], or `shared/specs`
/// beside the repository.
pub fn specs_dir() -> PathBuf {
    match std::env::var_os(SPECS_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/specs"
        )),
    }
}

impl Spec {
    /// Cloud Hypervisor's contract, `cloud-hypervisor.yaml`.
    ///
    /// # Errors
    ///
    /// [`ContractError::Read`] naming the file when it is missing, and
    /// the errors of [`Spec::parse`].
    pub fn cloud_hypervisor() -> Result<Spec, ContractError> {
        Spec::from_file(&specs_dir().join("cloud-hypervisor.yaml"))
    }

    /// Firecracker's contract, `firecracker.yaml`.
    ///
    /// # Errors
    ///
    /// As [`Spec::cloud_hypervisor`].
    pub fn firecracker() -> Result<Spec, ContractError> {
        Spec::from_file(&specs_dir().join("firecracker.yaml"))
    }

    /// The contract in `path`.
    ///
    /// # Errors
    ///
    /// [`ContractError::Read`] when the file cannot be read, and the errors
    /// of [`Spec::parse`].
    pub fn from_file(path: &Path) -> Result<Spec, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        Spec::parse(&name, &text).map_err(|err| match err {
            ContractError::Parse { source, .. } => ContractError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// The contract in the YAML `text`, called `name` in errors.
    ///
    /// # Errors
    ///
    /// [`ContractError::Parse`] when it is not YAML, and
    /// [`ContractError::Dialect`] when it is not OpenAPI 3 or Swagger 2.
    pub fn parse(name: &str, text: &str) -> Result<Spec, ContractError> {
        let doc: Yaml = serde_norway::from_str(text).map_err(|source| ContractError::Parse {
            path: PathBuf::from(name),
            source,
        })?;
        let dialect_error = || ContractError::Dialect {
            spec: name.to_owned(),
        };
        let (dialect, base) = if doc.get("openapi").is_some() {
            let url = doc
                .get("servers")
                .and_then(|servers| servers.get(0))
                .and_then(|server| server.get("url"))
                .and_then(Yaml::as_str)
                .unwrap_or("/");
            (Dialect::OpenApi3, url_path(url))
        } else if doc.get("swagger").is_some() {
            let base = doc.get("basePath").and_then(Yaml::as_str).unwrap_or("/");
            (Dialect::Swagger2, base.to_owned())
        } else {
            return Err(dialect_error());
        };
        if doc.get("paths").and_then(Yaml::as_mapping).is_none() {
            return Err(dialect_error());
        }
        Ok(Spec {
            name: name.to_owned(),
            dialect,
            base: base.trim_end_matches('/').to_owned(),
            doc,
        })
    }

    /// Checks one request: `path` as sent (base included, such as
    /// `/api/v1/vm.create`), and its JSON body, if it has one.
    ///
    /// # Errors
    ///
    /// [`ContractError::OutsideBase`], [`ContractError::UnknownPath`],
    /// [`ContractError::Method`], [`ContractError::UnexpectedBody`],
    /// [`ContractError::MissingBody`] or [`ContractError::Body`] for a
    /// request that breaks the contract; [`ContractError::Ref`] for a
    /// broken spec.
    pub fn check(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<(), ContractError> {
        let (template, item) = self.find_path(path)?;
        let key = method.as_str().to_ascii_lowercase();
        let Some(operation) = item.get(key.as_str()) else {
            return Err(ContractError::Method {
                spec: self.name.clone(),
                method,
                template: template.to_owned(),
                allowed: allowed_methods(item),
            });
        };
        let (schema, required) = self.body_schema(item, operation)?;
        let (schema, body) = match (schema, body) {
            (None, None) => return Ok(()),
            (Some(_), None) if required => {
                return Err(ContractError::MissingBody {
                    spec: self.name.clone(),
                    method,
                    path: path.to_owned(),
                })
            }
            (Some(_), None) => return Ok(()),
            (None, Some(_)) => {
                return Err(ContractError::UnexpectedBody {
                    spec: self.name.clone(),
                    method,
                    path: path.to_owned(),
                })
            }
            (Some(schema), Some(body)) => (schema, body),
        };
        let violations = Checker::check(self, schema, body)?;
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ContractError::Body {
                spec: self.name.clone(),
                method,
                path: path.to_owned(),
                violations,
            })
        }
    }

    /// The spec's path item for a request path, with its template.
    fn find_path(&self, path: &str) -> Result<(&str, &Yaml), ContractError> {
        let path = path.split('?').next().unwrap_or_default();
        let relative = path
            .strip_prefix(self.base.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'));
        let Some(relative) = relative else {
            return Err(ContractError::OutsideBase {
                spec: self.name.clone(),
                path: path.to_owned(),
                base: self.base.clone(),
            });
        };
        let relative = if relative.is_empty() { "/" } else { relative };
        let paths = self.doc.get("paths").and_then(Yaml::as_mapping);
        // The template with the fewest parameters wins: `/balloon/statistics`
        // over a `/balloon/{x}`.
        paths
            .into_iter()
            .flatten()
            .filter_map(|(template, item)| {
                let template = template.as_str()?;
                template_params(template, relative).map(|params| (params, template, item))
            })
            .min_by_key(|(params, _, _)| *params)
            .map(|(_, template, item)| (template, item))
            .ok_or_else(|| ContractError::UnknownPath {
                spec: self.name.clone(),
                path: path.to_owned(),
            })
    }

    /// The schema of an operation's JSON body, and whether the body is
    /// required.
    fn body_schema<'a>(
        &'a self,
        item: &'a Yaml,
        operation: &'a Yaml,
    ) -> Result<(Option<&'a Yaml>, bool), ContractError> {
        match self.dialect {
            Dialect::OpenApi3 => {
                let Some(body) = operation.get("requestBody") else {
                    return Ok((None, false));
                };
                let body = self.resolve(body)?;
                let required = body
                    .get("required")
                    .and_then(Yaml::as_bool)
                    .unwrap_or(false);
                let schema = body
                    .get("content")
                    .and_then(|content| content.get("application/json"))
                    .and_then(|media| media.get("schema"));
                Ok((schema, required))
            }
            Dialect::Swagger2 => {
                let parameters = [operation, item]
                    .into_iter()
                    .filter_map(|node| node.get("parameters").and_then(Yaml::as_sequence))
                    .flatten();
                for parameter in parameters {
                    let parameter = self.resolve(parameter)?;
                    if parameter.get("in").and_then(Yaml::as_str) == Some("body") {
                        let required = parameter
                            .get("required")
                            .and_then(Yaml::as_bool)
                            .unwrap_or(false);
                        return Ok((parameter.get("schema"), required));
                    }
                }
                Ok((None, false))
            }
        }
    }

    /// Follows `$ref`s to the schema they name.
    fn resolve<'a>(&'a self, mut schema: &'a Yaml) -> Result<&'a Yaml, ContractError> {
        for _ in 0..MAX_REF_DEPTH {
            let Some(reference) = schema.get("$ref").and_then(Yaml::as_str) else {
                return Ok(schema);
            };
            schema = self.pointer(reference).ok_or_else(|| ContractError::Ref {
                spec: self.name.clone(),
                reference: reference.to_owned(),
            })?;
        }
        Err(ContractError::Ref {
            spec: self.name.clone(),
            reference: schema
                .get("$ref")
                .and_then(Yaml::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// The node a local reference such as `#/definitions/Drive` names.
    fn pointer(&self, reference: &str) -> Option<&Yaml> {
        let pointer = reference.strip_prefix("#/")?;
        pointer.split('/').try_fold(&self.doc, |node, token| {
            let token = token.replace("~1", "/").replace("~0", "~");
            node.get(token.as_str())
        })
    }
}

/// The path part of a server URL: `http://localhost/api/v1` → `/api/v1`.
fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match (url.contains("://"), after_scheme.find('/')) {
        (true, Some(slash)) => after_scheme[slash..].to_owned(),
        (true, None) => String::new(),
        (false, _) => url.to_owned(),
    }
}

/// How many parameters of `template` the request path fills, when it
/// matches: `{name}` takes one non-empty segment.
fn template_params(template: &str, path: &str) -> Option<usize> {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    if template.len() != path.len() {
        return None;
    }
    let mut params = 0;
    for (want, got) in template.iter().zip(&path) {
        if want.starts_with('{') && want.ends_with('}') {
            if got.is_empty() {
                return None;
            }
            params += 1;
        } else if want != got {
            return None;
        }
    }
    Some(params)
}

/// The methods a path item has, for an error.
fn allowed_methods(item: &Yaml) -> String {
    const METHODS: [&str; 7] = ["get", "put", "post", "patch", "delete", "head", "options"];
    let allowed: Vec<String> = METHODS
        .iter()
        .filter(|method| item.get(**method).is_some())
        .map(|method| method.to_ascii_uppercase())
        .collect();
    if allowed.is_empty() {
        "none".to_owned()
    } else {
        allowed.join(", ")
    }
}

/// Checks `ep` as the REST client would send it.
///
/// # Errors
///
/// As [`Spec::check`], and [`ContractError::Encode`] when its body does not
/// encode.
pub fn check_endpoint<E: Endpoint>(spec: &Spec, ep: &E) -> Result<(), ContractError> {
    let path = ep.path();
    let body = if ep.has_body() {
        Some(
            serde_json::to_value(ep).map_err(|source| ContractError::Encode {
                method: E::METHOD,
                path: path.clone().into_owned(),
                source,
            })?,
        )
    } else {
        None
    };
    spec.check(E::METHOD, &path, body.as_ref())
}

mod schema;
mod tests;
