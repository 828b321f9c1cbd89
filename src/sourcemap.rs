//! Source maps follow the code: `--source-map IN.map` rewrites the offsets of a WebAssembly
//! source map (version 3, as emscripten and binaryen write them) for the output module.
//!
//! In a wasm source map the generated code is one line, and each segment's generated column
//! is a byte offset from the start of the module file (binaryen's `sourcemap.js` test and
//! emscripten's `wasm-sourcemap.py` both count from byte 0 of the binary). Each column in the
//! input's Code section is mapped with the emitter's [`CodeMap`], exactly as DWARF addresses
//! are; the other fields (source, line, column, name) and every other JSON member are kept.
//! Segments outside the Code section point at nothing executable and are dropped (counted).
//! Refused: not JSON, not version 3, index maps (`sections`), mappings on several lines, and
//! malformed VLQ.

use crate::codemap::CodeMap;
use anyhow::{Context, Result, anyhow, bail};

/// The rewritten map and what changed.
#[derive(Debug, serde::Serialize)]
pub struct Rewritten {
    #[serde(skip)]
    pub json: Vec<u8>,
    /// Segments in the input's mappings.
    pub segments: usize,
    /// Segments whose generated column changed.
    pub moved: usize,
    /// Segments dropped because they lay outside the Code section.
    pub dropped: usize,
}

/// Rewrites source map `json` for a module whose code moved as `map` says (`None`: the module
/// has no code, and the map is returned unchanged).
pub fn rewrite(json: &[u8], map: Option<&CodeMap>) -> Result<Rewritten> {
    let mut value: serde_json::Value =
        serde_json::from_slice(json).context("not a JSON source map")?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| anyhow!("not a source map (not a JSON object)"))?;
    if object.get("version").and_then(|v| v.as_u64()) != Some(3) {
        bail!("not a version 3 source map");
    }
    if object.contains_key("sections") {
        bail!("index source maps (with `sections`) are not supported");
    }
    let mappings = object
        .get("mappings")
        .and_then(|m| m.as_str())
        .ok_or_else(|| anyhow!("the source map has no `mappings` string"))?;
    let segments = decode(mappings)?;
    let mut rewritten = Rewritten {
        json: Vec::new(),
        segments: segments.len(),
        moved: 0,
        dropped: 0,
    };
    let Some(map) = map else {
        rewritten.json = json.to_vec();
        return Ok(rewritten);
    };
    let mut kept = Vec::with_capacity(segments.len());
    for mut s in segments {
        match map.map_file_offset(s[0] as u64) {
            Some(new) => {
                if new != s[0] as u64 {
                    rewritten.moved += 1;
                }
                s[0] = new as i64;
                kept.push(s);
            }
            None => rewritten.dropped += 1,
        }
    }
    object.insert("mappings".into(), encode(&kept).into());
    rewritten.json = serde_json::to_vec(&value).expect("serializable");
    Ok(rewritten)
}

/// A segment with absolute values: generated column, then source index, source line, source
/// column and name index when present (`len` is 1, 4 or 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    values: [i64; 5],
    len: usize,
}

impl std::ops::Index<usize> for Segment {
    type Output = i64;
    fn index(&self, i: usize) -> &i64 {
        &self.values[i]
    }
}

impl std::ops::IndexMut<usize> for Segment {
    fn index_mut(&mut self, i: usize) -> &mut i64 {
        &mut self.values[i]
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn decode(mappings: &str) -> Result<Vec<Segment>> {
    let lines: Vec<&str> = mappings.split(';').collect();
    if lines.iter().skip(1).any(|l| !l.is_empty()) {
        bail!("the mappings span several generated lines: not a WebAssembly source map");
    }
    // Every field but the generated column is relative to the previous segment's.
    let mut previous = [0i64; 5];
    let mut out = Vec::new();
    for text in lines[0].split(',').filter(|s| !s.is_empty()) {
        let mut values = [0i64; 5];
        let mut len = 0;
        let mut shift = 0;
        let mut accumulated = 0i64;
        for c in text.bytes() {
            let digit = BASE64
                .iter()
                .position(|&b| b == c)
                .ok_or_else(|| anyhow!("malformed mappings: {:?} is not base64", c as char))?
                as i64;
            if shift > 60 {
                bail!("malformed mappings: a value is too large");
            }
            accumulated |= (digit & 31) << shift;
            shift += 5;
            if digit & 32 == 0 {
                if len == 5 {
                    bail!("malformed mappings: a segment has more than 5 fields");
                }
                let magnitude = accumulated >> 1;
                values[len] = if accumulated & 1 != 0 {
                    -magnitude
                } else {
                    magnitude
                };
                len += 1;
                accumulated = 0;
                shift = 0;
            }
        }
        if shift != 0 || !matches!(len, 1 | 4 | 5) {
            bail!("malformed mappings: segment {text:?}");
        }
        for (value, previous) in values.iter_mut().zip(&mut previous).take(len) {
            *value += *previous;
            *previous = *value;
        }
        out.push(Segment { values, len });
    }
    Ok(out)
}

fn encode(segments: &[Segment]) -> String {
    let mut out = String::new();
    let mut previous = [0i64; 5];
    for (k, s) in segments.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        for i in 0..s.len {
            let delta = s[i] - previous[i];
            previous[i] = s[i];
            let mut v = if delta < 0 {
                ((-delta) << 1) | 1
            } else {
                delta << 1
            };
            loop {
                let mut digit = v & 31;
                v >>= 5;
                if v != 0 {
                    digit |= 32;
                }
                out.push(BASE64[digit as usize] as char);
                if v == 0 {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_binaryens_example() {
        // binaryen's test/binaryen.js/sourcemap.js: `i32.const` at byte 0x18 of the module,
        // from module.c line 2 column 3 (0-based 1 and 2).
        let s = decode("wBAAE,E").unwrap();
        assert_eq!(s[0].values[..4], [24, 0, 0, 2]);
        assert_eq!(s[0].len, 4);
        assert_eq!(s[1].values[0], 26);
        assert_eq!(s[1].len, 1);
    }

    #[test]
    fn encode_inverts_decode() {
        for m in ["wBAAE,E", "AAAA,CAAC,kBAAkB,qFACA", "gMAAK,YAAY,+rBAAY"] {
            assert_eq!(encode(&decode(m).unwrap()), m);
        }
    }

    #[test]
    fn refuses_what_is_not_a_wasm_map() {
        assert!(decode("AAAA;AACA").is_err());
        assert!(decode("AA").is_err());
        assert!(decode("A!AA").is_err());
        assert!(rewrite(br#"{"version":2,"mappings":""}"#, None).is_err());
        assert!(rewrite(b"not json", None).is_err());
    }
}
