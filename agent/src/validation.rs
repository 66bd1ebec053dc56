//! JSON-schema validation with errors located the way a user reads them:
//! `images[1].ports[0]` rather than the JSON pointer `/images/1/ports/0`.

use std::fmt;

use jsonschema::error::ValidationErrorKind;
use serde::Serialize;
use serde_json::Value;

/// One thing wrong with the input, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the offending field, e.g. `images[1].ports[0]`; empty for the document.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A compiled JSON schema shipped with the agent.
pub struct Schema {
    validator: jsonschema::Validator,
    schema: Value,
}

impl Schema {
    /// Compiles a schema; the schemas are part of the program, so a bad one is a bug.
    pub fn compile(text: &str) -> Schema {
        let schema: Value = serde_json::from_str(text).expect("shipped schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("shipped schema compiles");
        Schema { validator, schema }
    }

    /// Every violation of the schema, located.
    pub fn validate(&self, instance: &Value) -> Vec<FieldError> {
        self.validator
            .iter_errors(instance)
            .map(|error| {
                let field = field_path(error.instance_path().as_str());
                match error.kind() {
                    ValidationErrorKind::AdditionalProperties { unexpected } => FieldError::new(
                        join(&field, unexpected.first().map(String::as_str).unwrap_or("")),
                        "is not a known field",
                    ),
                    ValidationErrorKind::Required { property } => FieldError::new(
                        join(&field, property.as_str().unwrap_or_default()),
                        "is required",
                    ),
                    _ => match self.title_at(error.schema_path().as_str()) {
                        // A value that is not what the schema names it: `"80:abc" is not
                        // a port mapping`.
                        Some(title) => {
                            FieldError::new(field, format!("{} is not {title}", error.instance()))
                        }
                        None => FieldError::new(field, error.to_string()),
                    },
                }
            })
            .collect()
    }
}

impl Schema {
    /// The `title` of the subschema holding the keyword at `path` (a schema path, `$ref`
    /// followed), if it has one.
    fn title_at(&self, path: &str) -> Option<&str> {
        let mut segments: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|segment| segment.replace("~1", "/").replace("~0", "~"))
            .collect();
        segments.pop();
        let mut node = &self.schema;
        for segment in &segments {
            node = if segment == "$ref" {
                let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
                self.schema.pointer(target)?
            } else {
                match node {
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    _ => node.get(segment)?,
                }
            };
        }
        node.get("title")?.as_str()
    }
}

/// `a.b` or `b` when `a` is empty.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Turns a JSON pointer into a dotted path with indices: `/images/1/ports/0` →
/// `images[1].ports[0]`.
pub fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_dotted_paths() {
        assert_eq!(field_path(""), "");
        assert_eq!(field_path("/images/1/ports/0"), "images[1].ports[0]");
        assert_eq!(field_path("/a~1b/c~0d"), "a/b.c~d");
    }

    #[test]
    fn errors_name_the_field() {
        let schema = Schema::compile(
            r#"{"type":"object","required":["a"],"additionalProperties":false,
                "properties":{"a":{"type":"array","items":{"type":"integer"}}}}"#,
        );
        let errors = schema.validate(&serde_json::json!({"a": [1, "x"], "b": 2}));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"a[1]"), "{errors:?}");
        assert!(fields.contains(&"b"), "{errors:?}");
        let missing = schema.validate(&serde_json::json!({}));
        assert_eq!(missing, vec![FieldError::new("a", "is required")]);
    }
}
