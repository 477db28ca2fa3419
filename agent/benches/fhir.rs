//! FHIR mapping throughput (messages/s): one stored message → its transaction Bundle as
//! JSON bytes, as the `format = "fhir"` uplink does before each POST. Three shapes: an
//! ASTM chemistry message (H, P, O, 8 R, L) with a code map, the same without one, and an
//! HL7 ORU^R01 hematology panel (36 OBX). `cargo bench -p labagent --bench fhir`;
//! figures in docs/perf/fhir.md.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use labagent::fhir::{Input, Mapper};
use labagent_config::{ChannelFhir, CodeMap, CodeMapEntry};

fn astm() -> String {
    let mut m = String::from("H|\\^&|||cobas-c311^2.1^SN1|||||host|RSUPL^BATCH|P|1|20250115093000\rP|1||PID00000042\rO|1|S0000000042||^^^CHEM|R|20250115080000|||||N||||SER\r");
    for (k, (code, unit, range)) in [
        ("GLU", "mg/dL", "70-110"),
        ("CREA", "mg/dL", "0.7-1.3"),
        ("NA", "mmol/L", "135-145"),
        ("K", "mmol/L", "3.5-5.1"),
        ("ALT", "U/L", "<41"),
        ("AST", "U/L", "<40"),
        ("CHOL", "mg/dL", "<200"),
        ("TRIG", "mg/dL", "<150"),
    ]
    .iter()
    .enumerate()
    {
        m.push_str(&format!(
            "R|{}|^^^{code}|{}.4|{unit}|{range}|N||F||||2025011509{k:02}00\r",
            k + 1,
            60 + k
        ));
    }
    m.push_str("L|1|N\r");
    m
}

fn hl7() -> String {
    let mut m = String::from("MSH|^~\\&|ELite 580|Erba|||20250628173423||ORU^R01|ac84fae4|P|2.3.1||||||UNICODE\rPID|1||P-42\rOBR|1||25059143|01001^Automated Count^99MRC||20250628173310|20250628173310\r");
    for i in 0..36 {
        m.push_str(&format!(
            "OBX|{}|NM|{}-{}^T{i}^LN||{}.{}|10*3/uL|4.00-10.00|N|||F\r",
            i + 1,
            700 + i,
            i % 10,
            5 + i % 7,
            i % 10
        ));
    }
    m
}

fn settings(with_map: bool) -> BTreeMap<String, ChannelFhir> {
    let mut c = ChannelFhir {
        timezone: Some("Europe/Berlin".into()),
        patient_id_system: Some("urn:oid:1.2.3".into()),
        ..ChannelFhir::defaults()
    };
    if with_map {
        let codes = ["GLU", "CREA", "NA", "K", "ALT", "AST", "CHOL", "TRIG"]
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    CodeMapEntry {
                        loinc: "2345-7".into(),
                        display: Some(format!("{c} display")),
                        unit: None,
                    },
                )
            })
            .collect();
        c.code_map = Some(CodeMap {
            path: "/etc/labagent/codes.toml".into(),
            codes,
        });
    }
    BTreeMap::from([("ch".to_string(), c)])
}

fn bench(c: &mut Criterion) {
    let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_874_700);
    let mut g = c.benchmark_group("fhir_map");
    g.throughput(Throughput::Elements(1));
    for (name, proto, text, map) in [
        ("astm_8_results_code_map", "astm", astm(), true),
        ("astm_8_results_unmapped", "astm", astm(), false),
        ("hl7_oru_36_obx", "hl7", hl7(), false),
    ] {
        let mapper = Mapper::new("lab-1", &settings(map)).unwrap();
        let input = Input {
            key: "1a2b3c4d-000000000042",
            channel: "ch",
            protocol: proto,
            text: &text,
            received_at: received,
        };
        let bytes = mapper.map(&input).unwrap().json.len();
        eprintln!(
            "{name}: {} bytes of text -> {bytes} bytes of Bundle",
            text.len()
        );
        g.bench_function(name, |b| b.iter(|| mapper.map(&input).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
