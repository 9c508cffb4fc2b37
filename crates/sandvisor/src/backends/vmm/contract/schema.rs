//! Walking a JSON body alongside its schema: `$ref` and `allOf` resolved,
//! properties, required fields, JSON types and string enums checked.

use std::collections::BTreeSet;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use super::{ContractError, Spec, Violation, MAX_REF_DEPTH};

/// What a schema allows beyond its named properties.
#[derive(Debug, Clone, Copy)]
enum Extra<'a> {
    /// Nothing: the schema names its properties.
    Closed,
    /// Anything: a free-form object.
    Open,
    /// Values of this schema, under any name.
    Schema(&'a Yaml),
}

/// A schema with its `allOf` parts merged.
#[derive(Debug, Default)]
struct Shape<'a> {
    types: BTreeSet<&'a str>,
    properties: Vec<(&'a str, &'a Yaml)>,
    required: Vec<&'a str>,
    additional: Option<Extra<'a>>,
    items: Option<&'a Yaml>,
    enums: Option<Vec<&'a str>>,
    variants: Vec<&'a Yaml>,
}

impl<'a> Shape<'a> {
    fn extra(&self) -> Extra<'a> {
        match self.additional {
            Some(extra) => extra,
            None if self.properties.is_empty() => Extra::Open,
            None => Extra::Closed,
        }
    }

    fn property(&self, name: &str) -> Option<&'a Yaml> {
        self.properties
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, schema)| *schema)
    }
}

/// Walks a body alongside its schema, gathering violations.
pub(super) struct Checker<'a> {
    spec: &'a Spec,
    violations: Vec<Violation>,
}

impl<'a> Checker<'a> {
    /// Every place `body` breaks `schema`, a schema of `spec`.
    pub(super) fn check(
        spec: &'a Spec,
        schema: &'a Yaml,
        body: &Json,
    ) -> Result<Vec<Violation>, ContractError> {
        let mut checker = Checker {
            spec,
            violations: Vec::new(),
        };
        checker.value(schema, body, "$")?;
        Ok(checker.violations)
    }

    fn value(&mut self, schema: &'a Yaml, value: &Json, at: &str) -> Result<(), ContractError> {
        let shape = self.shape(schema)?;
        if !shape.variants.is_empty() && !self.any_variant(&shape.variants, value, at)? {
            self.violations
                .push(Violation::NoVariant { at: at.to_owned() });
        }
        if value.is_null() {
            // serde writes an absent `Option` as null; the VMMs take it.
            return Ok(());
        }
        if !shape.types.is_empty() && !shape.types.iter().any(|ty| is_type(value, ty)) {
            self.violations.push(Violation::WrongType {
                at: at.to_owned(),
                expected: shape.types.iter().copied().collect::<Vec<_>>().join(" or "),
                found: json_type(value),
            });
            return Ok(());
        }
        if let (Some(allowed), Json::String(text)) = (&shape.enums, value) {
            if !allowed.contains(&text.as_str()) {
                self.violations.push(Violation::NotInEnum {
                    at: at.to_owned(),
                    value: text.clone(),
                });
            }
        }
        match value {
            Json::Object(fields) => {
                for (name, field) in fields {
                    let here = format!("{at}.{name}");
                    match (shape.property(name), shape.extra()) {
                        (Some(schema), _) | (None, Extra::Schema(schema)) => {
                            self.value(schema, field, &here)?
                        }
                        (None, Extra::Open) => {}
                        (None, Extra::Closed) => {
                            self.violations.push(Violation::UnknownField { at: here })
                        }
                    }
                }
                for name in &shape.required {
                    if !fields.contains_key(*name) {
                        self.violations.push(Violation::MissingField {
                            at: format!("{at}.{name}"),
                        });
                    }
                }
            }
            Json::Array(elements) => {
                if let Some(items) = shape.items {
                    for (index, element) in elements.iter().enumerate() {
                        self.value(items, element, &format!("{at}[{index}]"))?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `value` passes one of `variants` (`oneOf`/`anyOf`).
    fn any_variant(
        &mut self,
        variants: &[&'a Yaml],
        value: &Json,
        at: &str,
    ) -> Result<bool, ContractError> {
        for variant in variants {
            let mut trial = Checker {
                spec: self.spec,
                violations: Vec::new(),
            };
            trial.value(variant, value, at)?;
            if trial.violations.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `schema` resolved, with its `allOf` parts merged in.
    fn shape(&self, schema: &'a Yaml) -> Result<Shape<'a>, ContractError> {
        let mut shape = Shape::default();
        self.merge(schema, &mut shape, 0)?;
        Ok(shape)
    }

    fn merge(
        &self,
        schema: &'a Yaml,
        shape: &mut Shape<'a>,
        depth: usize,
    ) -> Result<(), ContractError> {
        let schema = self.spec.resolve(schema)?;
        if depth > MAX_REF_DEPTH {
            return Err(ContractError::Ref {
                spec: self.spec.name.clone(),
                reference: "allOf".to_owned(),
            });
        }
        if let Some(ty) = schema.get("type").and_then(Yaml::as_str) {
            shape.types.insert(ty);
        }
        if let Some(properties) = schema.get("properties").and_then(Yaml::as_mapping) {
            for (name, property) in properties {
                if let Some(name) = name.as_str() {
                    shape.properties.push((name, property));
                }
            }
        }
        if let Some(required) = schema.get("required").and_then(Yaml::as_sequence) {
            shape
                .required
                .extend(required.iter().filter_map(Yaml::as_str));
        }
        match schema.get("additionalProperties") {
            Some(Yaml::Bool(true)) => shape.additional = Some(Extra::Open),
            Some(Yaml::Bool(false)) => shape.additional = Some(Extra::Closed),
            Some(extra @ Yaml::Mapping(_)) => shape.additional = Some(Extra::Schema(extra)),
            _ => {}
        }
        if let Some(items) = schema.get("items") {
            shape.items = Some(items);
        }
        if let Some(values) = schema.get("enum").and_then(Yaml::as_sequence) {
            let strings: Vec<&str> = values.iter().filter_map(Yaml::as_str).collect();
            if strings.len() == values.len() {
                shape.enums = Some(strings);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(variants) = schema.get(key).and_then(Yaml::as_sequence) {
                shape.variants.extend(variants);
            }
        }
        if let Some(parts) = schema.get("allOf").and_then(Yaml::as_sequence) {
            for part in parts {
                self.merge(part, shape, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Whether `value` is of the OpenAPI `ty`.
fn is_type(value: &Json, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        // A type this checker does not know is not held against the body.
        _ => true,
    }
}

fn json_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_f64() => "a number",
        Json::Number(_) => "an integer",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}
