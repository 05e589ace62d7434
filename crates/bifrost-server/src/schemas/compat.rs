//! The backward-compatibility check of a new schema version: data valid under the old
//! schema must stay valid under the new one.
//!
//! Whether one JSON Schema accepts everything another accepts is undecidable in general, so
//! this is a structural comparison that errs on the side of refusing: it walks both schemas
//! together (properties, items, additional properties) and reports every change that can
//! reject old data — a new required property, a changed type, a removed enum value, closed
//! additional properties, a tighter bound or pattern — and any change of a keyword whose
//! effect it cannot judge (composition, references, conditionals). Such a version can
//! still be registered with `"compatibility": "none"`.

use serde_json::{Map, Value};

/// One change that can reject data the old version accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Incompatibility {
    /// JSON Pointer into the new schema.
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Every incompatibility of `new` with `old`; empty: compatible.
pub(crate) fn backward(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

/// Lower bounds: a larger value in the new schema is tighter.
const LOWER: [&str; 5] = ["minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"];
/// Upper bounds: a smaller value is tighter.
const UPPER: [&str; 5] = ["maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"];
/// Keywords whose change this check cannot judge.
const OPAQUE: [&str; 16] = [
    "$ref",
    "$dynamicRef",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
];

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// `true` is the empty schema; `false` rejects everything.
fn as_object(schema: &Value) -> Option<Map<String, Value>> {
    match schema {
        Value::Bool(true) => Some(Map::new()),
        Value::Object(map) => Some(map.clone()),
        _ => None,
    }
}

fn types(schema: &Map<String, Value>) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
        _ => None,
    }
}

fn walk(old: &Value, new: &Value, path: &str, out: &mut Vec<Incompatibility>) {
    let mut report = |at: String, message: String| out.push(Incompatibility { path: at, message });
    let Some(new) = as_object(new) else {
        if as_object(old).is_some() {
            report(path.to_owned(), "the new schema rejects everything (false)".to_owned());
        }
        return;
    };
    let Some(old) = as_object(old) else { return }; // Nothing was valid before.
    let at = |keyword: &str| format!("{path}/{}", escape(keyword));

    if let Some(new_types) = types(&new) {
        let lost: Vec<String> = match types(&old) {
            None => vec!["any type".to_owned()],
            Some(old_types) => old_types
                .into_iter()
                .filter(|t| {
                    let widened = t == "integer" && new_types.iter().any(|n| n == "number");
                    !(new_types.contains(t) || widened)
                })
                .collect(),
        };
        if !lost.is_empty() {
            report(at("type"), format!("the type no longer allows {}", lost.join(", ")));
        }
    }
    let old_required: Vec<&str> = old
        .get("required")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |r| r.iter().filter_map(Value::as_str).collect());
    if let Some(required) = new.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !old_required.contains(&name) {
                report(at("required"), format!("{name:?} is a new required property"));
            }
        }
    }
    for keyword in ["enum", "const"] {
        let Some(new_value) = new.get(keyword) else { continue };
        match (keyword, old.get(keyword)) {
            (_, None) => report(at(keyword), format!("{keyword} is new: other values are rejected")),
            ("enum", Some(Value::Array(old_values))) => {
                let new_values = new_value.as_array().cloned().unwrap_or_default();
                for value in old_values.iter().filter(|v| !new_values.contains(v)) {
                    report(at(keyword), format!("the enum value {value} is removed"));
                }
            }
            (_, Some(old_value)) if old_value != new_value => {
                report(at(keyword), format!("{keyword} changed from {old_value} to {new_value}"));
            }
            _ => {}
        }
    }
    for keyword in LOWER {
        if let Some(bound) = new.get(keyword).and_then(Value::as_f64) {
            match old.get(keyword).and_then(Value::as_f64) {
                Some(before) if bound <= before => {}
                Some(before) => report(at(keyword), format!("{keyword} tightened from {before} to {bound}")),
                None => report(at(keyword), format!("{keyword} {bound} is new")),
            }
        }
    }
    for keyword in UPPER {
        if let Some(bound) = new.get(keyword).and_then(Value::as_f64) {
            match old.get(keyword).and_then(Value::as_f64) {
                Some(before) if bound >= before => {}
                Some(before) => report(at(keyword), format!("{keyword} tightened from {before} to {bound}")),
                None => report(at(keyword), format!("{keyword} {bound} is new")),
            }
        }
    }
    for keyword in ["pattern", "multipleOf", "format"] {
        if let Some(value) = new.get(keyword)
            && old.get(keyword) != Some(value)
        {
            report(at(keyword), format!("{keyword} {value} is new or changed"));
        }
    }
    for keyword in OPAQUE {
        if new.get(keyword).is_some() && new.get(keyword) != old.get(keyword) {
            report(
                at(keyword),
                format!(
                    "{keyword} changed: compatibility cannot be proven (register with \"compatibility\": \"none\" to accept it)"
                ),
            );
        }
    }

    // What the old schema allowed for a property it did not name.
    let old_additional = old.get("additionalProperties").cloned().unwrap_or(Value::Bool(true));
    match new.get("additionalProperties") {
        None => {}
        Some(Value::Bool(false)) if old_additional != Value::Bool(false) => {
            report(at("additionalProperties"), "additional properties are closed".to_owned());
        }
        Some(schema) => walk(&old_additional, schema, &at("additionalProperties"), out),
    }
    if let Some(Value::Object(properties)) = new.get("properties") {
        let old_properties = old.get("properties").and_then(Value::as_object);
        for (name, schema) in properties {
            let before = old_properties.and_then(|p| p.get(name)).unwrap_or(&old_additional);
            walk(before, schema, &format!("{}/{}", at("properties"), escape(name)), out);
        }
    }
    if let Some(items) = new.get("items") {
        let before = old.get("items").cloned().unwrap_or(Value::Bool(true));
        walk(&before, items, &at("items"), out);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(old: Value, new: Value) -> Vec<String> {
        backward(&old, &new).into_iter().map(|i| i.path).collect()
    }

    #[test]
    fn widening_is_compatible() {
        let old = json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}},
            "required": ["n"], "additionalProperties": false});
        let new = json!({"type": "object", "properties": {"n": {"type": "number", "maximum": 20},
            "note": {"type": "string"}}, "required": ["n"]});
        assert_eq!(paths(old, new), Vec::<String>::new());
    }

    #[test]
    fn each_tightening_is_named_by_its_path() {
        let old = json!({"type": "object", "properties": {
            "kind": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 0}, "s": {"type": "string"}}});
        let new = json!({"type": "object", "properties": {
            "kind": {"enum": ["a"]}, "n": {"type": "string"}, "s": {"type": "string", "maxLength": 3}},
            "required": ["s"], "additionalProperties": false});
        assert_eq!(
            paths(old, new),
            vec![
                "/required",
                "/additionalProperties",
                "/properties/kind/enum",
                "/properties/n/type",
                "/properties/s/maxLength"
            ]
        );
    }

    #[test]
    fn a_bound_moving_inwards_is_tighter_and_outwards_is_not() {
        assert_eq!(paths(json!({"minimum": 1}), json!({"minimum": 2})), vec!["/minimum"]);
        assert!(paths(json!({"minimum": 2}), json!({"minimum": 1})).is_empty());
        assert_eq!(paths(json!({}), json!({"maxItems": 5})), vec!["/maxItems"]);
    }

    #[test]
    fn a_property_the_old_schema_left_open_is_checked_against_anything() {
        assert_eq!(
            paths(
                json!({"type": "object"}),
                json!({"type": "object", "properties": {"a/b": {"type": "string"}}})
            ),
            vec!["/properties/a~1b/type"]
        );
    }

    #[test]
    fn unjudgeable_changes_are_refused() {
        assert_eq!(paths(json!({}), json!({"anyOf": [{"type": "string"}]})), vec!["/anyOf"]);
        assert_eq!(paths(json!(true), json!(false)), vec![""]);
    }
}
