//! The provider's schemas: attributes with their JSON type expressions, turned into the
//! protocol's `Schema`, and diagnostics with attribute paths.

use crate::cty::Type;
use crate::proto::tfplugin6 as tf;

/// One attribute of a provider, resource or data source.
#[derive(Debug, Clone)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Type,
    pub mode: Mode,
    pub sensitive: bool,
    pub description: &'static str,
}

/// Who sets an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Required,
    Optional,
    Computed,
}

impl Attr {
    pub const fn new(name: &'static str, ty: Type, mode: Mode, description: &'static str) -> Attr {
        Attr { name, ty, mode, sensitive: false, description }
    }
}

/// A block: its attributes and what it is.
#[derive(Debug, Clone)]
pub struct Block {
    pub description: &'static str,
    pub attrs: Vec<Attr>,
}

impl Block {
    pub fn to_proto(&self) -> tf::Schema {
        let attributes = self
            .attrs
            .iter()
            .map(|a| tf::schema::Attribute {
                name: a.name.to_owned(),
                r#type: a.ty.to_json().to_string().into_bytes(),
                nested_type: None,
                description: a.description.to_owned(),
                required: a.mode == Mode::Required,
                optional: a.mode == Mode::Optional,
                computed: a.mode == Mode::Computed,
                sensitive: a.sensitive,
                description_kind: tf::StringKind::Plain as i32,
                deprecated: false,
                write_only: false,
            })
            .collect();
        tf::Schema {
            version: 0,
            block: Some(tf::schema::Block {
                version: 0,
                attributes,
                block_types: Vec::new(),
                description: self.description.to_owned(),
                description_kind: tf::StringKind::Plain as i32,
                deprecated: false,
            }),
        }
    }
}

/// A path to a top-level attribute.
pub fn path(attr: &str) -> tf::AttributePath {
    tf::AttributePath {
        steps: vec![tf::attribute_path::Step {
            selector: Some(tf::attribute_path::step::Selector::AttributeName(attr.to_owned())),
        }],
    }
}

/// An error diagnostic, on an attribute when `attr` is given.
pub fn error(
    summary: impl Into<String>,
    detail: impl Into<String>,
    attr: Option<&str>,
) -> tf::Diagnostic {
    tf::Diagnostic {
        severity: tf::diagnostic::Severity::Error as i32,
        summary: summary.into(),
        detail: detail.into(),
        attribute: attr.map(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_carry_type_expressions_and_modes() {
        let block = Block {
            description: "d",
            attrs: vec![
                Attr::new("name", Type::String, Mode::Required, "n"),
                Attr::new("exclude", Type::list(Type::String), Mode::Optional, "e"),
                Attr::new("digest", Type::String, Mode::Computed, "g"),
            ],
        };
        let schema = block.to_proto();
        let attrs = schema.block.expect("block").attributes;
        assert_eq!(attrs[0].r#type, br#""string""#);
        assert!(attrs[0].required && !attrs[0].optional && !attrs[0].computed);
        assert_eq!(attrs[1].r#type, br#"["list","string"]"#);
        assert!(attrs[1].optional);
        assert!(attrs[2].computed && !attrs[2].required);
    }

    #[test]
    fn diagnostics_name_the_attribute() {
        let d = error("bad", "content: not JSON", Some("content"));
        let step = &d.attribute.expect("path").steps[0];
        assert_eq!(
            step.selector,
            Some(tf::attribute_path::step::Selector::AttributeName("content".into()))
        );
        assert_eq!(d.severity, tf::diagnostic::Severity::Error as i32);
    }
}
