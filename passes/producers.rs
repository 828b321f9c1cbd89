//! producers — records `processed-by: wasmfix <version>` in the `producers` section.
//!
//! Inserts: nothing executable. The `producers` custom section gains (or updates) one
//! `processed-by` value, so anyone reading the module can tell it was rewritten and by which
//! version; a module without a `producers` section gets one at the end.
//! Leaves unchanged: every execution (custom sections have no semantics), every other section
//! byte for byte, every other field and value of `producers` in its original order.
//! Refuses: a malformed `producers` section (it would have to be dropped or guessed at).

use super::{Pass, PassCx, PassReport};
use anyhow::{Context, Result};
use wasm_encoder::{ProducersField, ProducersSection};

pub struct Producers;

pub const TOOL: &str = "wasmfix";

impl Pass for Producers {
    fn name(&self) -> &'static str {
        "producers"
    }

    fn description(&self) -> &'static str {
        "record `processed-by: wasmfix <version>` in the producers section"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let version = env!("CARGO_PKG_VERSION");
        let m = cx.module;
        let existing = m
            .sections
            .iter()
            .position(|s| s.custom_name == Some("producers"));
        let mut fields: Vec<(String, Vec<(String, String)>)> = Vec::new();
        if let Some(i) = existing {
            let s = &m.sections[i];
            let reader = wasmparser::ProducersSectionReader::new(m.section_reader(s))
                .context("malformed producers section")?;
            for field in reader {
                let field = field.context("malformed producers section")?;
                let mut values = Vec::new();
                for v in field.values {
                    let v = v.context("malformed producers section")?;
                    values.push((v.name.to_string(), v.version.to_string()));
                }
                fields.push((field.name.to_string(), values));
            }
        }
        let processed_by = match fields.iter_mut().find(|(n, _)| n == "processed-by") {
            Some((_, values)) => values,
            None => {
                fields.push(("processed-by".into(), Vec::new()));
                &mut fields.last_mut().expect("just pushed").1
            }
        };
        let summary = match processed_by.iter_mut().find(|(n, _)| n == TOOL) {
            Some((_, v)) if v == version => format!("already records {TOOL} {version}"),
            Some((_, v)) => {
                let old = std::mem::replace(v, version.to_string());
                format!("updated processed-by {TOOL} {old} to {version}")
            }
            None => {
                processed_by.push((TOOL.into(), version.into()));
                format!("added processed-by {TOOL} {version}")
            }
        };
        let mut section = ProducersSection::new();
        for (name, values) in &fields {
            let mut field = ProducersField::new();
            for (n, v) in values {
                field.value(n, v);
            }
            section.field(name, &field);
        }
        match existing {
            Some(i) => cx.edits.replace_custom(i, &section),
            None => cx.edits.append_custom(&section),
        }
        Ok(PassReport {
            pass: self.name(),
            summary,
            warnings: Vec::new(),
            details: serde_json::json!({ "processed-by": format!("{TOOL} {version}") }),
        })
    }
}
