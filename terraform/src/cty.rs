//! Terraform's values on the wire: cty's msgpack encoding (`DynamicValue.msgpack`) and its JSON
//! form (stored state handed to `UpgradeResourceState`), and the schema's type expressions.
//!
//! Values are decoded without their type: a msgpack map is a [`Value::Map`] whether the schema
//! says object or map, and the resource code builds objects with exactly the schema's
//! attributes. Any msgpack extension is an unknown value (cty uses type 0, and 12 for an
//! unknown with refinements).

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};

/// A value Terraform sent or the provider returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Not known until apply.
    Unknown,
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// Lists, sets and tuples.
    List(Vec<Value>),
    /// Maps and objects.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// An object from attribute names and values.
    pub fn object<const N: usize>(attrs: [(&str, Value); N]) -> Value {
        Value::Map(attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// A string, or null for `None`.
    pub fn opt_string(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::String(s.into()))
    }

    /// An attribute of an object; null when absent or when `self` is not an object.
    pub fn get(&self, name: &str) -> &Value {
        match self {
            Value::Map(m) => m.get(name).unwrap_or(&Value::Null),
            _ => &Value::Null,
        }
    }

    /// Sets an attribute of an object (no-op on anything else).
    pub fn set(&mut self, name: &str, value: Value) {
        if let Value::Map(m) = self {
            m.insert(name.to_owned(), value);
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Known all the way down.
    pub fn is_wholly_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(items) => items.iter().all(Value::is_wholly_known),
            Value::Map(m) => m.values().all(Value::is_wholly_known),
            _ => true,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Decodes cty's msgpack encoding.
    pub fn from_msgpack(bytes: &[u8]) -> anyhow::Result<Value> {
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        let mut reader = bytes;
        let raw = rmpv::decode::read_value(&mut reader).context("decoding msgpack")?;
        from_rmpv(raw)
    }

    /// Encodes as cty's msgpack (unknown as extension 0).
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &to_rmpv(self));
        out
    }

    /// Decodes the JSON form of a stored value (no unknowns there).
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Value> {
        let json: serde_json::Value = serde_json::from_slice(bytes).context("decoding JSON")?;
        Ok(from_serde(json))
    }
}

fn from_rmpv(raw: rmpv::Value) -> anyhow::Result<Value> {
    Ok(match raw {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => Value::Number(
            i.as_i64()
                .map(|n| n as f64)
                .or_else(|| i.as_u64().map(|n| n as f64))
                .ok_or_else(|| anyhow!("integer out of range"))?,
        ),
        rmpv::Value::F32(f) => Value::Number(f64::from(f)),
        rmpv::Value::F64(f) => Value::Number(f),
        // cty sends numbers that do not fit a float as their decimal text.
        rmpv::Value::String(s) => {
            Value::String(s.into_str().ok_or_else(|| anyhow!("string is not UTF-8"))?)
        }
        rmpv::Value::Binary(b) => {
            Value::String(String::from_utf8(b).map_err(|_| anyhow!("bytes are not UTF-8"))?)
        }
        rmpv::Value::Array(items) => {
            Value::List(items.into_iter().map(from_rmpv).collect::<anyhow::Result<_>>()?)
        }
        rmpv::Value::Map(pairs) => {
            let mut map = BTreeMap::new();
            for (k, v) in pairs {
                let key = match k {
                    rmpv::Value::String(s) => {
                        s.into_str().ok_or_else(|| anyhow!("map key is not UTF-8"))?
                    }
                    other => bail!("map key is not a string: {other}"),
                };
                map.insert(key, from_rmpv(v)?);
            }
            Value::Map(map)
        }
        rmpv::Value::Ext(_, _) => Value::Unknown,
    })
}

fn to_rmpv(v: &Value) -> rmpv::Value {
    match v {
        Value::Unknown => rmpv::Value::Ext(0, vec![0]),
        Value::Null => rmpv::Value::Nil,
        Value::Bool(b) => rmpv::Value::Boolean(*b),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            rmpv::Value::Integer((*n as i64).into())
        }
        Value::Number(n) => rmpv::Value::F64(*n),
        Value::String(s) => rmpv::Value::String(s.as_str().into()),
        Value::List(items) => rmpv::Value::Array(items.iter().map(to_rmpv).collect()),
        Value::Map(m) => rmpv::Value::Map(
            m.iter().map(|(k, v)| (rmpv::Value::String(k.as_str().into()), to_rmpv(v))).collect(),
        ),
    }
}

fn from_serde(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(items) => Value::List(items.into_iter().map(from_serde).collect()),
        serde_json::Value::Object(m) => {
            Value::Map(m.into_iter().map(|(k, v)| (k, from_serde(v))).collect())
        }
    }
}

/// A schema type, written out as Terraform's JSON type expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    String,
    Number,
    Bool,
    List(Box<Type>),
    Map(Box<Type>),
    Object(Vec<(&'static str, Type)>),
}

impl Type {
    pub fn list(of: Type) -> Type {
        Type::List(Box::new(of))
    }

    pub fn map(of: Type) -> Type {
        Type::Map(Box::new(of))
    }

    /// `"string"`, `["list","string"]`, `["object",{"a":"string"}]`, ...
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Type::String => json!("string"),
            Type::Number => json!("number"),
            Type::Bool => json!("bool"),
            Type::List(of) => json!(["list", of.to_json()]),
            Type::Map(of) => json!(["map", of.to_json()]),
            Type::Object(attrs) => {
                let attrs: serde_json::Map<_, _> =
                    attrs.iter().map(|(k, t)| ((*k).to_owned(), t.to_json())).collect();
                json!(["object", attrs])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).expect("encode");
        out
    }

    #[test]
    fn any_extension_type_is_unknown() {
        for ext in [0i8, 12, 5] {
            let bytes = encode(rmpv::Value::Ext(ext, vec![0xd4]));
            assert_eq!(Value::from_msgpack(&bytes).expect("decode"), Value::Unknown, "ext {ext}");
        }
        let obj =
            encode(rmpv::Value::Map(vec![("digest".into(), rmpv::Value::Ext(12, vec![1, 2, 3]))]));
        let v = Value::from_msgpack(&obj).expect("decode");
        assert_eq!(v.get("digest"), &Value::Unknown);
        assert!(!v.is_wholly_known());
    }

    #[test]
    fn numbers_arrive_as_int_float_or_string() {
        assert_eq!(Value::from_msgpack(&encode(7.into())).expect("int"), Value::Number(7.0));
        assert_eq!(
            Value::from_msgpack(&encode(rmpv::Value::F64(2.5))).expect("f64"),
            Value::Number(2.5)
        );
        assert_eq!(
            Value::from_msgpack(&encode(rmpv::Value::F32(1.5))).expect("f32"),
            Value::Number(1.5)
        );
        assert_eq!(
            Value::from_msgpack(&encode(u64::MAX.into())).expect("u64"),
            Value::Number(u64::MAX as f64)
        );
        // A number beyond a float's precision comes as its decimal text.
        assert_eq!(
            Value::from_msgpack(&encode("123456789012345678901234567890".into())).expect("str"),
            Value::string("123456789012345678901234567890")
        );
        // Whole numbers go back as integers, others as floats.
        assert_eq!(Value::Number(3.0).to_msgpack(), encode(3.into()));
        assert_eq!(Value::Number(0.25).to_msgpack(), encode(rmpv::Value::F64(0.25)));
    }

    #[test]
    fn nested_values_round_trip() {
        let v = Value::object([
            ("name", Value::string("p")),
            ("exclude", Value::List(vec![Value::string("/tmp"), Value::string("/var")])),
            ("none", Value::Null),
            ("flag", Value::Bool(true)),
            ("later", Value::Unknown),
            (
                "pcrs",
                Value::Map(BTreeMap::from([(
                    "0".to_owned(),
                    Value::List(vec![Value::string("ab")]),
                )])),
            ),
            (
                "agents",
                Value::List(vec![Value::object([
                    ("uuid", Value::string("u")),
                    ("registered", Value::Bool(false)),
                ])]),
            ),
        ]);
        let bytes = v.to_msgpack();
        assert_eq!(Value::from_msgpack(&bytes).expect("decode"), v);
        // Unknown is written as cty writes it: extension 0.
        assert_eq!(Value::Unknown.to_msgpack(), vec![0xd4, 0, 0]);
        assert_eq!(Value::Null.to_msgpack(), vec![0xc0]);
        assert_eq!(Value::from_msgpack(&[]).expect("empty"), Value::Null);
        assert_eq!(v.get("missing"), &Value::Null);
    }

    #[test]
    fn stored_json_decodes() {
        let v = Value::from_json(br#"{"name":"p","entries":3,"exclude":null,"l":["a"]}"#)
            .expect("json");
        assert_eq!(v.get("name"), &Value::string("p"));
        assert_eq!(v.get("entries"), &Value::Number(3.0));
        assert_eq!(v.get("exclude"), &Value::Null);
        assert_eq!(v.get("l"), &Value::List(vec![Value::string("a")]));
        assert!(Value::from_json(b"{").is_err());
    }

    #[test]
    fn malformed_msgpack_is_an_error() {
        assert!(Value::from_msgpack(&[0x92, 0x01]).is_err());
        assert!(
            Value::from_msgpack(&encode(rmpv::Value::Map(vec![(1.into(), 2.into())]))).is_err()
        );
    }

    #[test]
    fn type_expressions_are_terraform_json() {
        assert_eq!(Type::String.to_json().to_string(), r#""string""#);
        assert_eq!(Type::list(Type::String).to_json().to_string(), r#"["list","string"]"#);
        assert_eq!(
            Type::map(Type::list(Type::String)).to_json().to_string(),
            r#"["map",["list","string"]]"#
        );
        assert_eq!(
            Type::list(Type::Object(vec![
                ("uuid", Type::String),
                ("n", Type::Number),
                ("b", Type::Bool)
            ]))
            .to_json()
            .to_string(),
            r#"["list",["object",{"b":"bool","n":"number","uuid":"string"}]]"#
        );
    }
}
