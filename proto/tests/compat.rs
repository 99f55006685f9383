//! The v1 compatibility promise, enforced: every message field, enum value, service and
//! RPC of the committed snapshot (`proto/v1.descriptor.bin`) must still exist with the same
//! number, name, type and streaming. Additions are fine.
//!
//! After an additive change, refresh the snapshot with
//! `JITSUDO_UPDATE_DESCRIPTOR=1 cargo test -p jitsudo-proto --test compat`.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/v1.descriptor.bin");

#[derive(Debug, PartialEq, Eq)]
struct Field {
    name: String,
    ty: i32,
    type_name: String,
    label: i32,
}

#[derive(Default, Debug)]
struct Api {
    /// (message, field number) → field
    fields: BTreeMap<(String, i32), Field>,
    /// (enum, value number) → name
    enum_values: BTreeMap<(String, i32), String>,
    /// (service, rpc) → (input, output, client streaming, server streaming)
    rpcs: BTreeMap<(String, String), (String, String, bool, bool)>,
}

fn walk_messages(prefix: &str, msgs: &[prost_types::DescriptorProto], api: &mut Api) {
    for m in msgs {
        let name = format!("{prefix}.{}", m.name());
        for f in &m.field {
            api.fields.insert(
                (name.clone(), f.number()),
                Field {
                    name: f.name().into(),
                    ty: f.r#type() as i32,
                    type_name: f.type_name().into(),
                    label: f.label() as i32,
                },
            );
        }
        for e in &m.enum_type {
            for v in &e.value {
                api.enum_values.insert(
                    (format!("{name}.{}", e.name()), v.number()),
                    v.name().into(),
                );
            }
        }
        walk_messages(&name, &m.nested_type, api);
    }
}

fn api(bytes: &[u8]) -> Api {
    let set = FileDescriptorSet::decode(bytes).expect("a FileDescriptorSet");
    let mut api = Api::default();
    for file in set.file.iter().filter(|f| f.package() == "jitsudo.v1") {
        let pkg = format!(".{}", file.package());
        walk_messages(&pkg, &file.message_type, &mut api);
        for e in &file.enum_type {
            for v in &e.value {
                api.enum_values
                    .insert((format!("{pkg}.{}", e.name()), v.number()), v.name().into());
            }
        }
        for s in &file.service {
            for m in &s.method {
                api.rpcs.insert(
                    (format!("{pkg}.{}", s.name()), m.name().into()),
                    (
                        m.input_type().into(),
                        m.output_type().into(),
                        m.client_streaming(),
                        m.server_streaming(),
                    ),
                );
            }
        }
    }
    api
}

#[test]
fn v1_keeps_every_field_enum_value_and_rpc_of_the_snapshot() {
    let current = jitsudo_proto::FILE_DESCRIPTOR_SET;
    if std::env::var_os("JITSUDO_UPDATE_DESCRIPTOR").is_some() {
        std::fs::write(SNAPSHOT, current).expect("write the snapshot");
    }
    let snapshot = std::fs::read(SNAPSHOT).expect("proto/v1.descriptor.bin is committed");
    let (old, new) = (api(&snapshot), api(current));
    assert!(
        !old.rpcs.is_empty() && !old.fields.is_empty(),
        "the snapshot is empty"
    );
    let mut broken = Vec::new();
    for (key, f) in &old.fields {
        match new.fields.get(key) {
            None => broken.push(format!(
                "field {}.{} (#{}) was removed or renumbered",
                key.0, f.name, key.1
            )),
            Some(n) if n != f => broken.push(format!(
                "field {}.{} (#{}) changed: {f:?} -> {n:?}",
                key.0, f.name, key.1
            )),
            _ => {}
        }
    }
    for (key, name) in &old.enum_values {
        if new.enum_values.get(key) != Some(name) {
            broken.push(format!(
                "enum value {}.{name} (= {}) was removed or renumbered",
                key.0, key.1
            ));
        }
    }
    for (key, sig) in &old.rpcs {
        match new.rpcs.get(key) {
            None => broken.push(format!("rpc {}.{} was removed", key.0, key.1)),
            Some(n) if n != sig => {
                broken.push(format!("rpc {}.{} changed: {sig:?} -> {n:?}", key.0, key.1))
            }
            _ => {}
        }
    }
    assert!(
        broken.is_empty(),
        "jitsudo.v1 promises additive changes only:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_catches_a_renumbered_field() {
    let mut set = FileDescriptorSet::decode(jitsudo_proto::FILE_DESCRIPTOR_SET).unwrap();
    let before = api(&set.encode_to_vec());
    let file = set
        .file
        .iter_mut()
        .find(|f| f.package() == "jitsudo.v1" && !f.message_type.is_empty())
        .unwrap();
    file.message_type[0].field[0].number = Some(999);
    file.message_type[0].field[0].r#type = Some(Type::Bytes as i32);
    let after = api(&set.encode_to_vec());
    let missing = before
        .fields
        .keys()
        .filter(|k| !after.fields.contains_key(k))
        .count();
    assert_eq!(missing, 1);
}
