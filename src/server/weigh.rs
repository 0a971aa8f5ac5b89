//! What a request will cost in memory, read from its protobuf bytes before they are decoded.
//!
//! A message's size says little about what decoding it takes: 20 MB of empty content blocks
//! (two bytes each on the wire) decode into 720 MB of structs, and 20 MB of control characters
//! become 120 MB of JSON escapes on the way to Bedrock. So the admission layer weighs each
//! message with one pass over its bytes, following the schema from the descriptor set the
//! server already serves through reflection: how many elements (messages, strings, byte
//! fields) it holds, how much text and how many bytes, and how much escaping the text needs.
//! Nothing is allocated but the counts.

use std::collections::HashMap;

use prost::Message as _;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};

/// How deep the walk follows nested messages; prost's own recursion limit is 100.
const MAX_DEPTH: usize = 100;

/// What a message holds, as far as memory goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weight {
    /// Length-delimited fields: each nested message, string and byte field.
    pub elements: u64,
    /// Bytes of string fields.
    pub text: u64,
    /// Extra bytes JSON escaping adds to the strings (at most 5 per control character, 1 per
    /// quote or backslash).
    pub escapes: u64,
    /// Bytes of `bytes` fields (images), which JSON carries as base64.
    pub bytes: u64,
}

/// How a length-delimited field is held once decoded.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Message(usize),
    Text,
    Bytes,
}

/// The length-delimited fields of one message type, by field number.
#[derive(Debug, Default)]
struct Shape {
    fields: Vec<(u32, Kind)>,
}

impl Shape {
    fn kind(&self, number: u32) -> Option<Kind> {
        self.fields
            .iter()
            .find(|(n, _)| *n == number)
            .map(|&(_, kind)| kind)
    }
}

/// The shapes of every message type of a descriptor set, and the one requests have.
#[derive(Debug)]
pub struct Schema {
    shapes: Vec<Shape>,
    root: usize,
}

/// A descriptor set that cannot be read, or lacks the root type.
#[derive(Debug, thiserror::Error)]
#[error("reading the descriptor set for {root}: {reason}")]
pub struct SchemaError {
    root: String,
    reason: String,
}

impl Schema {
    /// The schema of `root` (a full name such as `router.v1.ConverseRequest`) from an encoded
    /// file descriptor set.
    pub fn new(descriptor_set: &[u8], root: &str) -> Result<Self, SchemaError> {
        let error = |reason: String| SchemaError {
            root: root.to_owned(),
            reason,
        };
        let set = FileDescriptorSet::decode(descriptor_set).map_err(|e| error(e.to_string()))?;
        let mut names = HashMap::new();
        let mut types = Vec::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect(package, message, &mut names, &mut types);
            }
        }
        let shapes = types
            .iter()
            .map(|message| Shape {
                fields: message
                    .field
                    .iter()
                    .filter_map(|field| {
                        let kind = match field.r#type() {
                            Type::Message => Kind::Message(*names.get(field.type_name())?),
                            Type::String => Kind::Text,
                            Type::Bytes => Kind::Bytes,
                            _ => return None,
                        };
                        Some((u32::try_from(field.number()).ok()?, kind))
                    })
                    .collect(),
            })
            .collect();
        let root = *names
            .get(format!(".{root}").as_str())
            .ok_or_else(|| error("no such message type".to_owned()))?;
        Ok(Self { shapes, root })
    }

    /// Weighs an encoded message of the root type. A malformed message is weighed up to where
    /// it breaks: decoding it fails there too, having allocated no more than that.
    pub fn weigh(&self, message: &[u8]) -> Weight {
        let mut weight = Weight::default();
        let _ = self.walk(self.root, message, 0, &mut weight);
        weight
    }

    fn walk(
        &self,
        shape: usize,
        mut buf: &[u8],
        depth: usize,
        weight: &mut Weight,
    ) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        let shape = &self.shapes[shape];
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let number = u32::try_from(key >> 3).map_err(|_| Malformed)?;
            match key & 7 {
                0 => {
                    varint(&mut buf)?;
                }
                1 => buf = buf.get(8..).ok_or(Malformed)?,
                5 => buf = buf.get(4..).ok_or(Malformed)?,
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).map_err(|_| Malformed)?;
                    let body = buf.get(..len).ok_or(Malformed)?;
                    buf = &buf[len..];
                    match shape.kind(number) {
                        Some(Kind::Message(child)) => {
                            weight.elements += 1;
                            self.walk(child, body, depth + 1, weight)?;
                        }
                        Some(Kind::Text) => {
                            weight.elements += 1;
                            weight.text += len as u64;
                            weight.escapes += escapes(body);
                        }
                        Some(Kind::Bytes) => {
                            weight.elements += 1;
                            weight.bytes += len as u64;
                        }
                        // Unknown fields are skipped by the decoder, allocating nothing.
                        None => {}
                    }
                }
                3 => skip_group(&mut buf, number, depth)?,
                _ => return Err(Malformed),
            }
        }
        Ok(())
    }
}

fn collect<'a>(
    scope: &str,
    message: &'a prost_types::DescriptorProto,
    names: &mut HashMap<String, usize>,
    types: &mut Vec<&'a prost_types::DescriptorProto>,
) {
    let name = format!("{scope}.{}", message.name());
    names.insert(format!(".{name}"), types.len());
    types.push(message);
    for nested in &message.nested_type {
        collect(&name, nested, names, types);
    }
}

/// Where the bytes stop making sense as protobuf.
#[derive(Debug)]
struct Malformed;

fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(Malformed)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

/// Skips a (deprecated) group of unknown fields up to its end tag; the decoder skips it too.
fn skip_group(buf: &mut &[u8], number: u32, depth: usize) -> Result<(), Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    loop {
        let key = varint(buf)?;
        let inner = u32::try_from(key >> 3).map_err(|_| Malformed)?;
        match key & 7 {
            0 => {
                varint(buf)?;
            }
            1 => *buf = buf.get(8..).ok_or(Malformed)?,
            5 => *buf = buf.get(4..).ok_or(Malformed)?,
            2 => {
                let len = usize::try_from(varint(buf)?).map_err(|_| Malformed)?;
                *buf = buf.get(len..).ok_or(Malformed)?;
            }
            3 => skip_group(buf, inner, depth + 1)?,
            4 if inner == number => return Ok(()),
            _ => return Err(Malformed),
        }
    }
}

/// The bytes JSON escaping adds to `text`: `\u00XX` for a control character (5 more; the
/// short forms such as `\n` add 1, counted as 5 here), `\"` and `\\` (1 more).
fn escapes(text: &[u8]) -> u64 {
    text.iter()
        .map(|&b| match b {
            0..=0x1f => 5,
            b'"' | b'\\' => 1,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb;

    fn schema() -> Schema {
        Schema::new(pb::FILE_DESCRIPTOR_SET, "router.v1.ConverseRequest").expect("schema")
    }

    fn text(t: &str) -> pb::ContentBlock {
        pb::ContentBlock {
            block: Some(pb::content_block::Block::Text(t.to_owned())),
        }
    }

    #[test]
    fn counts_what_decoding_allocates() {
        let request = pb::ConverseRequest {
            messages: vec![pb::Message {
                role: pb::Role::User as i32,
                content: vec![
                    text("hello \"world\"\n"),
                    pb::ContentBlock {
                        block: Some(pb::content_block::Block::Image(pb::Image {
                            format: pb::ImageFormat::Png as i32,
                            data: vec![7; 100],
                        })),
                    },
                ],
            }],
            system: vec!["terse".to_owned()],
            inference_config: Some(pb::InferenceConfig {
                stop_sequences: vec!["END".to_owned()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let weight = schema().weigh(&request.encode_to_vec());
        assert_eq!(
            weight,
            Weight {
                // message, 2 blocks, the text, the image and its data, system, config, stop
                elements: 9,
                text: 14 + 5 + 3,
                escapes: 2 + 5,
                bytes: 100,
            }
        );
    }

    #[test]
    fn empty_blocks_are_elements_however_small() {
        let request = pb::ConverseRequest {
            messages: vec![pb::Message {
                role: 1,
                content: vec![pb::ContentBlock::default(); 1000],
            }],
            ..Default::default()
        };
        assert_eq!(schema().weigh(&request.encode_to_vec()).elements, 1001);
    }

    #[test]
    fn unknown_fields_and_groups_weigh_nothing_but_what_follows_counts() {
        let mut wire = vec![
            // field 9, a group holding a string, then its end
            (9 << 3) | 3,
            (1 << 3) | 2,
            1,
            b'x',
            (9 << 3) | 4,
            // field 10, unknown, length-delimited
            (10 << 3) | 2,
            2,
            0,
            0,
        ];
        wire.extend(
            pb::ConverseRequest {
                system: vec!["a".to_owned(), "b".to_owned()],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let weight = schema().weigh(&wire);
        assert_eq!((weight.elements, weight.text), (2, 2));
    }

    #[test]
    fn malformed_bytes_are_weighed_up_to_the_break() {
        let mut wire = pb::ConverseRequest {
            system: vec!["abc".to_owned()],
            ..Default::default()
        }
        .encode_to_vec();
        wire.extend([(2 << 3) | 2, 200]);
        assert_eq!(schema().weigh(&wire).elements, 1);
        assert_eq!(schema().weigh(&[0xff; 20]), Weight::default());
    }
}
