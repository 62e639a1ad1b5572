//! The API reference (docs/api.md) generated from the v1 file descriptor set that prost-build
//! writes with source info: every service, RPC, message, field and enum with its proto comment,
//! and the roles each RPC admits as the daemons' own access tables give them.
//!
//! docs/api.md is prose written by hand around one generated region between
//! [`BEGIN`] and [`END`]; [`update`] replaces that region.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kl_svc::tls::Role;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet, SourceCodeInfo,
};

use crate::{Result, err};

/// Where the generated region of docs/api.md starts.
pub const BEGIN: &str =
    "<!-- BEGIN GENERATED REFERENCE: edit the .proto files, then regenerate -->";
/// Where it ends.
pub const END: &str = "<!-- END GENERATED REFERENCE -->";

/// Which roles each RPC of a service admits, by fully qualified service name. An RPC with an
/// empty list needs no client certificate.
pub type AccessTables<'a> = BTreeMap<&'a str, &'a [(&'a str, &'a [Role])]>;

/// The files of the keylime v1 packages in `encoded` (a `FileDescriptorSet`), in order.
pub fn keylime_files(encoded: &[u8]) -> Result<Vec<FileDescriptorProto>> {
    let set = FileDescriptorSet::decode(encoded)?;
    Ok(set.file.into_iter().filter(|f| f.package().starts_with("keylime.")).collect())
}

/// `document` with its generated region replaced by the reference of `files`.
pub fn update(
    document: &str,
    files: &[FileDescriptorProto],
    access: &AccessTables,
) -> Result<String> {
    let start = document.find(BEGIN).ok_or_else(|| err(format!("no line {BEGIN:?}")))?;
    let end = document.find(END).ok_or_else(|| err(format!("no line {END:?}")))?;
    if end < start {
        return Err(err("the generated region ends before it begins"));
    }
    let mut out = String::with_capacity(document.len());
    out.push_str(&document[..start + BEGIN.len()]);
    out.push_str("\n\n");
    out.push_str(&render(files, access)?);
    out.push('\n');
    out.push_str(&document[end..]);
    Ok(out)
}

/// The reference of `files`, as Markdown.
pub fn render(files: &[FileDescriptorProto], access: &AccessTables) -> Result<String> {
    let mut out = String::new();
    for file in files {
        let comments = Comments::of(file);
        let package = file.package();
        let _ = writeln!(out, "## Package `{package}`\n");
        let _ = writeln!(out, "File `proto/{}`.\n", file.name());
        // The file's opening comment belongs to the `syntax` statement (field 12).
        if let Some(text) = comments.leading(&[12]).or_else(|| comments.detached(&[12])) {
            let _ = writeln!(out, "{text}\n");
        }
        for (i, service) in file.service.iter().enumerate() {
            let full = format!("{package}.{}", service.name());
            let table = access
                .get(full.as_str())
                .ok_or_else(|| err(format!("no access table for {full}")))?;
            let _ = writeln!(out, "### Service `{full}`\n");
            if let Some(text) = comments.leading(&[6, i as i32]) {
                let _ = writeln!(out, "{text}\n");
            }
            let _ = writeln!(out, "| RPC | Request | Response | Roles |\n|---|---|---|---|");
            for method in &service.method {
                let roles = roles_of(table, &full, method.name())?;
                let _ = writeln!(
                    out,
                    "| [`{name}`](#{anchor}) | {req} | {stream}{resp} | {roles} |",
                    name = method.name(),
                    anchor = anchor(&format!("{full}.{}", method.name())),
                    req = type_link(method.input_type(), package),
                    stream = if method.server_streaming() { "stream " } else { "" },
                    resp = type_link(method.output_type(), package),
                );
            }
            out.push('\n');
            for (j, method) in service.method.iter().enumerate() {
                let qualified = format!("{full}.{}", method.name());
                let _ = writeln!(
                    out,
                    "<a id=\"{}\"></a>\n\n#### `{}`\n",
                    anchor(&qualified),
                    method.name()
                );
                let _ = writeln!(
                    out,
                    "`rpc {}({}) returns ({}{})`\n",
                    method.name(),
                    short(method.input_type(), package),
                    if method.server_streaming() { "stream " } else { "" },
                    short(method.output_type(), package)
                );
                let roles = roles_of(table, &full, method.name())?;
                let _ = writeln!(out, "Roles: {roles}.\n");
                match comments.leading(&[6, i as i32, 2, j as i32]) {
                    Some(text) => {
                        let _ = writeln!(out, "{text}\n");
                    }
                    None => return Err(err(format!("{qualified}: no comment in the .proto file"))),
                }
            }
        }
        let messages = file.message_type.iter().enumerate();
        let mut sections = Vec::new();
        for (i, message) in messages {
            collect_messages(message, "", &[4, i as i32], &mut sections);
        }
        if !sections.is_empty() {
            let _ = writeln!(out, "### Messages of `{package}`\n");
        }
        for (name, message, path) in sections {
            render_message(&mut out, &comments, package, &name, message, &path);
        }
        let mut enums = Vec::new();
        for (i, e) in file.enum_type.iter().enumerate() {
            enums.push((e.name().to_owned(), e, vec![5, i as i32]));
        }
        collect_nested_enums(&file.message_type, "", &[4], &mut enums);
        if !enums.is_empty() {
            let _ = writeln!(out, "### Enums of `{package}`\n");
        }
        for (name, e, path) in enums {
            render_enum(&mut out, &comments, package, &name, e, &path);
        }
    }
    Ok(out.trim_end().to_owned() + "\n")
}

fn roles_of(table: &[(&str, &[Role])], service: &str, rpc: &str) -> Result<String> {
    let (_, roles) = table.iter().find(|(name, _)| *name == rpc).ok_or_else(|| {
        err(format!("{service}.{rpc}: the daemon's access table has no rule for it"))
    })?;
    Ok(if roles.is_empty() {
        "none (no client certificate needed)".to_owned()
    } else {
        roles.iter().map(|r| format!("`{}`", r.as_str())).collect::<Vec<_>>().join(", ")
    })
}

/// Messages in declaration order, nested ones after their parent, map entries left out.
fn collect_messages<'a>(
    message: &'a DescriptorProto,
    prefix: &str,
    path: &[i32],
    out: &mut Vec<(String, &'a DescriptorProto, Vec<i32>)>,
) {
    if message.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let qualified = format!("{prefix}.{}", message.name());
    out.push((qualified.clone(), message, path.to_vec()));
    for (k, nested) in message.nested_type.iter().enumerate() {
        let mut nested_path = path.to_vec();
        nested_path.extend([3, k as i32]);
        collect_messages(nested, &qualified, &nested_path, out);
    }
}

fn collect_nested_enums<'a>(
    messages: &'a [DescriptorProto],
    prefix: &str,
    path: &[i32],
    out: &mut Vec<(String, &'a EnumDescriptorProto, Vec<i32>)>,
) {
    for (i, message) in messages.iter().enumerate() {
        let name = if prefix.is_empty() {
            message.name().to_owned()
        } else {
            format!("{prefix}.{}", message.name())
        };
        let mut message_path = path.to_vec();
        message_path.push(i as i32);
        for (k, e) in message.enum_type.iter().enumerate() {
            let mut enum_path = message_path.clone();
            enum_path.extend([4, k as i32]);
            out.push((format!("{name}.{}", e.name()), e, enum_path));
        }
        let mut nested_path = message_path.clone();
        nested_path.push(3);
        collect_nested_enums(&message.nested_type, &name, &nested_path, out);
    }
}

fn render_message(
    out: &mut String,
    comments: &Comments,
    package: &str,
    qualified: &str,
    message: &DescriptorProto,
    path: &[i32],
) {
    let name = qualified.trim_start_matches('.');
    let _ =
        writeln!(out, "<a id=\"{}\"></a>\n\n#### `{name}`\n", anchor(&format!("{package}.{name}")));
    if let Some(text) = comments.leading(path) {
        let _ = writeln!(out, "{text}\n");
    }
    if message.field.is_empty() {
        let _ = writeln!(out, "No fields.\n");
        return;
    }
    let _ = writeln!(out, "| Field | Number | Type | Description |\n|---|---|---|---|");
    for (j, field) in message.field.iter().enumerate() {
        let mut field_path = path.to_vec();
        field_path.extend([2, j as i32]);
        let description = comments.leading(&field_path).map(|t| t.replace('\n', " "));
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            field.name(),
            field.number(),
            field_type(field, message, package),
            description.unwrap_or_default().replace('|', "\\|")
        );
    }
    out.push('\n');
}

fn render_enum(
    out: &mut String,
    comments: &Comments,
    package: &str,
    name: &str,
    e: &EnumDescriptorProto,
    path: &[i32],
) {
    let _ =
        writeln!(out, "<a id=\"{}\"></a>\n\n#### `{name}`\n", anchor(&format!("{package}.{name}")));
    if let Some(text) = comments.leading(path) {
        let _ = writeln!(out, "{text}\n");
    }
    let _ = writeln!(out, "| Value | Number | Description |\n|---|---|---|");
    for (j, value) in e.value.iter().enumerate() {
        let mut value_path = path.to_vec();
        value_path.extend([2, j as i32]);
        let description = comments.leading(&value_path).map(|t| t.replace('\n', " "));
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            value.name(),
            value.number(),
            description.unwrap_or_default().replace('|', "\\|")
        );
    }
    out.push('\n');
}

fn field_type(
    field: &prost_types::FieldDescriptorProto,
    message: &DescriptorProto,
    package: &str,
) -> String {
    let base = |f: &prost_types::FieldDescriptorProto| match f.r#type() {
        Type::Message | Type::Enum => type_link(f.type_name(), package),
        other => format!("`{}`", other.as_str_name().trim_start_matches("TYPE_").to_lowercase()),
    };
    if field.r#type() == Type::Message {
        // A map field's type is a nested entry message named after it.
        let entry = field.type_name().rsplit('.').next().unwrap_or_default();
        let map = message
            .nested_type
            .iter()
            .find(|n| n.name() == entry && n.options.as_ref().is_some_and(|o| o.map_entry()));
        if let Some([key, value]) = map.map(|m| m.field.as_slice()) {
            return format!("map<{}, {}>", base(key), base(value));
        }
    }
    let label = match field.label() {
        Label::Repeated => "repeated ",
        _ if field.proto3_optional() => "optional ",
        _ => "",
    };
    format!("{label}{}", base(field))
}

/// A type name without the leading dot, and without the package when it is `package`.
fn short(type_name: &str, package: &str) -> String {
    let name = type_name.trim_start_matches('.');
    name.strip_prefix(package).and_then(|n| n.strip_prefix('.')).unwrap_or(name).to_owned()
}

fn type_link(type_name: &str, package: &str) -> String {
    let name = type_name.trim_start_matches('.');
    if name.starts_with("keylime.") {
        format!("[`{}`](#{})", short(type_name, package), anchor(name))
    } else {
        format!("`{name}`")
    }
}

fn anchor(qualified: &str) -> String {
    qualified.to_lowercase().replace('.', "-")
}

/// The comments of one file by source path.
struct Comments {
    leading: BTreeMap<Vec<i32>, String>,
    detached: BTreeMap<Vec<i32>, String>,
}

impl Comments {
    fn of(file: &FileDescriptorProto) -> Comments {
        let mut leading = BTreeMap::new();
        let mut detached = BTreeMap::new();
        let info = file.source_code_info.clone().unwrap_or(SourceCodeInfo { location: vec![] });
        for location in info.location {
            if let Some(text) = location.leading_comments.as_deref().map(clean)
                && !text.is_empty()
            {
                leading.insert(location.path.clone(), text);
            }
            let text: Vec<String> =
                location.leading_detached_comments.iter().map(|c| clean(c)).collect();
            if !text.is_empty() {
                detached.insert(location.path, text.join("\n\n"));
            }
        }
        Comments { leading, detached }
    }

    fn leading(&self, path: &[i32]) -> Option<String> {
        self.leading.get(path).cloned()
    }

    fn detached(&self, path: &[i32]) -> Option<String> {
        self.detached.get(path).cloned()
    }
}

/// A proto comment as Markdown: the one space after `//` dropped, lines kept.
fn clean(comment: &str) -> String {
    comment
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}
