//! A small writer of tag-only DM4 files (Gatan's `.gtg`), as `ncempy.io.dm.fileDM` and Gatan's software read them.
//!
//! Layout (integers of the structure big-endian, tag data little-endian as the header's byte-order word says):
//!
//! | part | bytes |
//! |---|---|
//! | header | u32 version = 4, u64 length of the root group, u32 byte order = 1 (little-endian data) |
//! | group | u8 sorted, u8 open, u64 number of entries, then the entries |
//! | entry | u8 kind (20 group, 21 data), u16 label length, label (ASCII), u64 bytes of the entry that follow |
//! | group entry | a group |
//! | data entry | `%%%%`, u64 n, n × u64 type description, the value |
//! | end | 8 zero bytes |
//!
//! Type descriptions: a simple value is `[type]` (3 i32, 5 u32, 7 f64, 8 bool); a text is an array of u16
//! characters, `[20, 4, length]`. A tag's full name, as ncempy reports it in `allTags`, is its groups' labels and
//! its own joined by dots after a leading dot: `.SI Dimensions.Size X`.

/// A tag's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A signed 32-bit integer (DM type 3).
    I32(i32),
    /// An unsigned 32-bit integer (DM type 5).
    U32(u32),
    /// A double (DM type 7).
    F64(f64),
    /// A boolean (DM type 8).
    Bool(bool),
    /// Text: an array of u16 characters (DM type 20 of type 4), as DigitalMicrograph stores strings.
    Text(String),
    /// A group of tags.
    Group(Vec<Tag>),
}

/// A labelled tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// Its label (ASCII; a label longer than 65535 bytes is cut).
    pub label: String,
    /// Its value.
    pub value: Value,
}

impl Tag {
    /// A tag `label` = `value`.
    pub fn new(label: &str, value: Value) -> Self {
        Self { label: label.to_owned(), value }
    }

    /// A group `label` of `tags`.
    pub fn group(label: &str, tags: Vec<Tag>) -> Self {
        Self::new(label, Value::Group(tags))
    }
}

const KIND_GROUP: u8 = 20;
const KIND_DATA: u8 = 21;

fn put_group(out: &mut Vec<u8>, tags: &[Tag]) {
    out.push(0); // not sorted
    out.push(1); // open
    out.extend_from_slice(&(tags.len() as u64).to_be_bytes());
    for t in tags {
        put_entry(out, t);
    }
}

fn put_entry(out: &mut Vec<u8>, t: &Tag) {
    let label = t.label.as_bytes();
    let label = &label[..label.len().min(u16::MAX as usize)];
    out.push(if matches!(t.value, Value::Group(_)) { KIND_GROUP } else { KIND_DATA });
    out.extend_from_slice(&(label.len() as u16).to_be_bytes());
    out.extend_from_slice(label);
    // The entry's length goes before its body: write a place for it and fill it in afterwards.
    let len_at = out.len();
    out.extend_from_slice(&[0; 8]);
    put_body(out, &t.value);
    let len = (out.len() - len_at - 8) as u64;
    out[len_at..len_at + 8].copy_from_slice(&len.to_be_bytes());
}

fn put_info(out: &mut Vec<u8>, info: &[u64]) {
    out.extend_from_slice(b"%%%%");
    out.extend_from_slice(&(info.len() as u64).to_be_bytes());
    for i in info {
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn put_body(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Group(tags) => put_group(out, tags),
        Value::I32(x) => {
            put_info(out, &[3]);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::U32(x) => {
            put_info(out, &[5]);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::F64(x) => {
            put_info(out, &[7]);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Bool(x) => {
            put_info(out, &[8]);
            out.push(u8::from(*x));
        }
        Value::Text(s) => {
            let chars: Vec<u16> = s.encode_utf16().collect();
            put_info(out, &[20, 4, chars.len() as u64]);
            for c in chars {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
    }
}

/// The bytes of a tag-only DM4 file whose root group holds `root`.
pub fn encode(root: &[Tag]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1024);
    put_group(&mut body, root);
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(&4u32.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Tag> {
        vec![
            Tag::group("SI Dimensions", vec![Tag::new("Size X", Value::I32(4)), Tag::new("Size Y", Value::I32(3))]),
            Tag::group(
                "ringdaq",
                vec![
                    Tag::new("Version", Value::Text("0.1.0".into())),
                    Tag::new("Frames", Value::U32(12)),
                    Tag::new("Frame rate", Value::F64(400.5)),
                    Tag::new("Complete", Value::Bool(true)),
                    Tag::group("Nested", vec![Tag::new("Depth", Value::I32(-2))]),
                ],
            ),
        ]
    }

    #[test]
    fn layout_of_a_small_file() {
        let b = encode(&[Tag::new("A", Value::I32(7))]);
        let mut want = vec![0, 0, 0, 4];
        let body_len = 2 + 8 + (1 + 2 + 1 + 8 + 4 + 8 + 8 + 4);
        want.extend_from_slice(&(body_len as u64).to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 1, 0, 1]);
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&[21, 0, 1, b'A']);
        want.extend_from_slice(&24u64.to_be_bytes());
        want.extend_from_slice(b"%%%%");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&[7, 0, 0, 0]);
        want.extend_from_slice(&[0; 8]);
        assert_eq!(b, want);
    }

    /// ncempy, the reader LiberTEM opens `.gtg` files with, reads every tag back. Needs python3 with ncempy (CI
    /// installs it).
    #[test]
    fn ncempy_reads_it_back() {
        let dir = crate::k2::gatan::tests::TempDir::new("dm4");
        let path = dir.0.join("tags.gtg");
        std::fs::write(&path, encode(&sample())).expect("write");
        let script = r#"
import sys, json
from ncempy.io import dm
with dm.fileDM(sys.argv[1], on_memory=True) as f:
    t = f.allTags
    print(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in t.items()}))
"#;
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output();
        let out = out.expect("python3 runs");
        assert!(out.status.success(), "ncempy failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            r#"".SI Dimensions.Size X": 4"#,
            r#"".SI Dimensions.Size Y": 3"#,
            r#"".ringdaq.Version": "0.1.0""#,
            r#"".ringdaq.Frames": 12"#,
            r#"".ringdaq.Frame rate": 400.5"#,
            r#"".ringdaq.Complete": 1"#,
            r#"".ringdaq.Nested.Depth": -2"#,
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
    }
}
