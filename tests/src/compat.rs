//! Wire compatibility of the v1 packages: what a change of the .proto files breaks for a client
//! or server built from an older snapshot of them.
//!
//! Additions are allowed (new messages, fields, enum values, RPCs, services). Breaking: a
//! removed message, enum, service or RPC; an RPC whose request or response type or streaming
//! changed; a removed or renumbered field; a field whose type or cardinality changed; a removed
//! enum value. Fields and values are matched by number, as the wire does; a field renamed in
//! place keeps the wire but breaks JSON and generated code, and is reported as well.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};

use crate::Result;

/// The keylime files of `files` as a snapshot: source info dropped, so that comment edits do
/// not change it.
pub fn snapshot(files: &[FileDescriptorProto]) -> Vec<u8> {
    let file = files
        .iter()
        .cloned()
        .map(|mut f| {
            f.source_code_info = None;
            f
        })
        .collect();
    FileDescriptorSet { file }.encode_to_vec()
}

/// Decodes a snapshot.
pub fn decode(encoded: &[u8]) -> Result<Vec<FileDescriptorProto>> {
    Ok(FileDescriptorSet::decode(encoded)?.file)
}

/// Every wire-breaking difference from `old` to `new`, one line each; empty when compatible.
pub fn breaking_changes(old: &[FileDescriptorProto], new: &[FileDescriptorProto]) -> Vec<String> {
    let (old, new) = (Index::of(old), Index::of(new));
    let mut found = Vec::new();
    for (name, message) in &old.messages {
        match new.messages.get(name) {
            None => found.push(format!("message {name} removed")),
            Some(now) => compare_fields(name, message, now, &mut found),
        }
    }
    for (name, e) in &old.enums {
        let Some(now) = new.enums.get(name) else {
            found.push(format!("enum {name} removed"));
            continue;
        };
        for value in &e.value {
            match now.value.iter().find(|v| v.number() == value.number()) {
                None => found.push(format!(
                    "enum {name}: value {} = {} removed",
                    value.name(),
                    value.number()
                )),
                // The wire keeps the number, but JSON and generated code use the name.
                Some(v) if v.name() != value.name() => found.push(format!(
                    "enum {name}: value {} = {} renamed to {}",
                    value.name(),
                    value.number(),
                    v.name()
                )),
                Some(_) => {}
            }
        }
    }
    for (name, service) in &old.services {
        let Some(now) = new.services.get(name) else {
            found.push(format!("service {name} removed"));
            continue;
        };
        for method in &service.method {
            let rpc = format!("{name}.{}", method.name());
            let Some(m) = now.method.iter().find(|m| m.name() == method.name()) else {
                found.push(format!("rpc {rpc} removed"));
                continue;
            };
            if m.input_type() != method.input_type() {
                found.push(format!(
                    "rpc {rpc}: request type {} changed to {}",
                    method.input_type(),
                    m.input_type()
                ));
            }
            if m.output_type() != method.output_type() {
                found.push(format!(
                    "rpc {rpc}: response type {} changed to {}",
                    method.output_type(),
                    m.output_type()
                ));
            }
            if m.client_streaming() != method.client_streaming()
                || m.server_streaming() != method.server_streaming()
            {
                found.push(format!("rpc {rpc}: streaming changed"));
            }
        }
    }
    found
}

fn compare_fields(
    message: &str,
    old: &DescriptorProto,
    new: &DescriptorProto,
    found: &mut Vec<String>,
) {
    for field in &old.field {
        let at = format!("{message}.{}", field.name());
        match new.field.iter().find(|f| f.number() == field.number()) {
            None => match new.field.iter().find(|f| f.name() == field.name()) {
                Some(moved) => found.push(format!(
                    "field {at} renumbered from {} to {}",
                    field.number(),
                    moved.number()
                )),
                None => found.push(format!("field {at} = {} removed", field.number())),
            },
            Some(now) => {
                if now.name() != field.name() {
                    match new.field.iter().find(|f| f.name() == field.name()) {
                        Some(moved) => found.push(format!(
                            "field {at} renumbered from {} to {}",
                            field.number(),
                            moved.number()
                        )),
                        None => found.push(format!(
                            "field {at} = {} renamed to {}",
                            field.number(),
                            now.name()
                        )),
                    }
                }
                if kind(now) != kind(field) {
                    found.push(format!(
                        "field {at} = {}: type {} changed to {}",
                        field.number(),
                        kind(field),
                        kind(now)
                    ));
                }
            }
        }
    }
}

/// What the wire sees of a field: cardinality and type.
fn kind(field: &FieldDescriptorProto) -> String {
    let label = match field.label() {
        prost_types::field_descriptor_proto::Label::Repeated => "repeated ",
        _ => "",
    };
    let ty = match field.r#type() {
        prost_types::field_descriptor_proto::Type::Message
        | prost_types::field_descriptor_proto::Type::Enum => field.type_name().to_owned(),
        other => other.as_str_name().trim_start_matches("TYPE_").to_lowercase(),
    };
    format!("{label}{ty}")
}

/// Messages, enums and services by fully qualified name (leading dot, as type names are).
#[derive(Default)]
struct Index {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
    services: BTreeMap<String, ServiceDescriptorProto>,
}

impl Index {
    fn of(files: &[FileDescriptorProto]) -> Index {
        let mut index = Index::default();
        for file in files {
            let prefix = format!(".{}", file.package());
            for m in &file.message_type {
                index.add_message(&prefix, m);
            }
            for e in &file.enum_type {
                index.enums.insert(format!("{prefix}.{}", e.name()), e.clone());
            }
            for s in &file.service {
                index.services.insert(format!("{}.{}", file.package(), s.name()), s.clone());
            }
        }
        index
    }

    fn add_message(&mut self, prefix: &str, message: &DescriptorProto) {
        let name = format!("{prefix}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        self.messages.insert(name, message.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Result<Vec<FileDescriptorProto>> {
        crate::apiref::keylime_files(kl_proto::FILE_DESCRIPTOR_SET)
    }

    fn message<'a>(
        files: &'a mut [FileDescriptorProto],
        package: &str,
        name: &str,
    ) -> Option<&'a mut DescriptorProto> {
        files
            .iter_mut()
            .filter(|f| f.package() == package)
            .flat_map(|f| f.message_type.iter_mut())
            .find(|m| m.name() == name)
    }

    #[test]
    fn the_current_files_are_compatible_with_themselves() -> Result<()> {
        let files = current()?;
        assert_eq!(breaking_changes(&files, &files), Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn a_renumbered_field_is_breaking() -> Result<()> {
        let old = current()?;
        let mut new = old.clone();
        let m = message(&mut new, "keylime.verifier.v1", "EnrollAgentRequest")
            .ok_or("EnrollAgentRequest")?;
        let field = m.field.iter_mut().find(|f| f.name() == "agent_id").ok_or("agent_id")?;
        field.number = Some(99);
        let found = breaking_changes(&old, &new);
        assert!(
            found.iter().any(|c| c.contains("EnrollAgentRequest.agent_id renumbered from 1 to 99")),
            "{found:?}"
        );
        Ok(())
    }

    #[test]
    fn a_removed_field_is_breaking() -> Result<()> {
        let old = current()?;
        let mut new = old.clone();
        let m = message(&mut new, "keylime.registrar.v1", "Contact").ok_or("Contact")?;
        m.field.retain(|f| f.name() != "port");
        let found = breaking_changes(&old, &new);
        assert_eq!(found, vec!["field .keylime.registrar.v1.Contact.port = 2 removed".to_owned()]);
        Ok(())
    }

    #[test]
    fn a_changed_field_type_is_breaking() -> Result<()> {
        let old = current()?;
        let mut new = old.clone();
        let m = message(&mut new, "keylime.registrar.v1", "Contact").ok_or("Contact")?;
        let field = m.field.iter_mut().find(|f| f.name() == "port").ok_or("port")?;
        field.set_type(prost_types::field_descriptor_proto::Type::String);
        let found = breaking_changes(&old, &new);
        assert_eq!(
            found,
            vec![
                "field .keylime.registrar.v1.Contact.port = 2: type uint32 changed to string"
                    .to_owned()
            ]
        );
        Ok(())
    }

    #[test]
    fn removed_rpcs_changed_rpc_types_and_removed_enum_values_are_breaking() -> Result<()> {
        let old = current()?;
        let mut new = old.clone();
        let agent = new.iter_mut().find(|f| f.package() == "keylime.agent.v1").ok_or("agent")?;
        let service = agent.service.first_mut().ok_or("service")?;
        service.method.retain(|m| m.name() != "VerifyKey");
        let quote = service.method.iter_mut().find(|m| m.name() == "GetQuote").ok_or("GetQuote")?;
        quote.output_type = Some(".keylime.agent.v1.GetInfoResponse".to_owned());
        let hash =
            agent.enum_type.iter_mut().find(|e| e.name() == "HashAlgorithm").ok_or("enum")?;
        hash.value.retain(|v| v.name() != "HASH_ALGORITHM_SHA384");
        let found = breaking_changes(&old, &new);
        assert!(
            found.contains(&"rpc keylime.agent.v1.Agent.VerifyKey removed".to_owned()),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|c| c.starts_with("rpc keylime.agent.v1.Agent.GetQuote: response type")),
            "{found:?}"
        );
        assert!(found.iter().any(|c| c.contains("HASH_ALGORITHM_SHA384 = 3 removed")), "{found:?}");
        Ok(())
    }

    #[test]
    fn an_enum_value_renamed_in_place_is_breaking() -> Result<()> {
        let old = current()?;
        let mut new = old.clone();
        let agent = new.iter_mut().find(|f| f.package() == "keylime.agent.v1").ok_or("agent")?;
        let hash =
            agent.enum_type.iter_mut().find(|e| e.name() == "HashAlgorithm").ok_or("enum")?;
        let sha384 =
            hash.value.iter_mut().find(|v| v.name() == "HASH_ALGORITHM_SHA384").ok_or("SHA384")?;
        sha384.name = Some("HASH_ALGORITHM_SHA3_384".to_owned());
        let found = breaking_changes(&old, &new);
        assert_eq!(
            found,
            ["enum .keylime.agent.v1.HashAlgorithm: value HASH_ALGORITHM_SHA384 = 3 renamed to \
              HASH_ALGORITHM_SHA3_384"],
            "{found:?}"
        );
        Ok(())
    }

    #[test]
    fn additions_are_compatible() -> Result<()> {
        let old = current()?;
        let mut new = old.clone();
        let m = message(&mut new, "keylime.registrar.v1", "Contact").ok_or("Contact")?;
        let mut added = m.field.first().cloned().ok_or("a field")?;
        added.name = Some("zone".to_owned());
        added.number = Some(3);
        added.json_name = Some("zone".to_owned());
        m.field.push(added);
        let agent = new.iter_mut().find(|f| f.package() == "keylime.agent.v1").ok_or("agent")?;
        let hash =
            agent.enum_type.iter_mut().find(|e| e.name() == "HashAlgorithm").ok_or("enum")?;
        let mut value = hash.value.last().cloned().ok_or("a value")?;
        value.name = Some("HASH_ALGORITHM_SM3_256".to_owned());
        value.number = Some(5);
        hash.value.push(value);
        assert_eq!(breaking_changes(&old, &new), Vec::<String>::new());
        Ok(())
    }
}
