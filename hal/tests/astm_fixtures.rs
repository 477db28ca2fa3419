//! Every ASTM wire fixture through the receiver session, in one go and in random chunk
//! splits, checked against `tests/fixtures/astm/EXPECTED.tsv`; record-layer fixtures
//! must parse. Reads the repo's own copies always, and `../shared/fixtures` (relative
//! to the workspace root) when present.

mod common;

use std::path::{Path, PathBuf};

use common::{feed, Buf, Model};
use labagent_hal::astm::link::Link;
use labagent_hal::astm::record::{records, split_messages, summary, RecordType};
use labagent_hal::astm::{ENQ, EOT, NAK};
use labagent_hal::session::{Event, Reject, Session};
use labagent_hal::time::Instant;

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    messages: Vec<Vec<u8>>,
    incomplete: Vec<Vec<u8>>,
    naks: usize,
    rejects: Vec<Reject>,
    duplicates: usize,
}

impl Outcome {
    fn kind(&self) -> &'static str {
        use labagent_hal::astm::frame::FrameError;
        if self.rejects.is_empty() {
            "ok"
        } else if self
            .rejects
            .iter()
            .any(|r| matches!(r, Reject::Frame(FrameError::Checksum)))
        {
            "nak-checksum"
        } else if self
            .rejects
            .iter()
            .any(|r| matches!(r, Reject::Sequence { .. }))
        {
            "nak-sequence"
        } else {
            "nak-other"
        }
    }
}

fn run(bytes: &[u8], chunks: &mut dyn FnMut() -> usize) -> Outcome {
    let mut input = Vec::new();
    if !bytes.contains(&ENQ) {
        input.push(ENQ);
    }
    input.extend_from_slice(bytes);
    input.push(EOT);
    let mut link = Link::<Buf>::new(Default::default());
    let mut model = Model::default();
    let mut out = Outcome::default();
    let mut rest = &input[..];
    let now = Instant::ZERO;
    let note = |tx: Vec<u8>, events: Vec<Event>, out: &mut Outcome| {
        out.naks += tx.iter().filter(|&&b| b == NAK).count();
        for e in events {
            match e {
                Event::FrameRejected(j) => out.rejects.push(j),
                Event::DuplicateFrame => out.duplicates += 1,
                _ => {}
            }
        }
    };
    while !rest.is_empty() {
        let n = chunks().clamp(1, rest.len());
        let (a, b) = rest.split_at(n);
        let (tx, ev) = feed(&mut link, a, now, &mut |c| model.apply(c));
        note(tx, ev, &mut out);
        rest = b;
    }
    link.handle_line_lost(now);
    let (tx, ev) = feed(&mut link, &[], now, &mut |c| model.apply(c));
    note(tx, ev, &mut out);
    out.messages = model.texts();
    out.incomplete = model.incomplete.iter().map(|(t, _)| t.clone()).collect();
    out
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture_dirs() -> Vec<(PathBuf, PathBuf)> {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/astm");
    let mut v = vec![(own.join("wire"), own.join("records"))];
    for shared in [
        workspace_root().join("../shared/fixtures"),
        PathBuf::from("/work/shared/fixtures"),
    ] {
        if shared.join("astm-wire").is_dir() {
            v.push((shared.join("astm-wire"), shared.join("astm")));
            break;
        }
    }
    v
}

struct Expected {
    file: String,
    kind: String,
    messages: usize,
    incomplete: usize,
    pairs: Vec<String>,
}

fn expected() -> Vec<Expected> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/astm/EXPECTED.tsv");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            Expected {
                file: c[0].to_string(),
                kind: c[1].to_string(),
                messages: c[2].parse().unwrap(),
                incomplete: c[3].parse().unwrap(),
                pairs: c
                    .get(4)
                    .map(|s| {
                        s.split(',')
                            .filter(|x| !x.is_empty() && *x != "-")
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[test]
fn wire_fixtures_match_expected_table() {
    let table = expected();
    let mut seen = 0;
    let mut report = String::new();
    for (wire, recs) in fixture_dirs() {
        let mut files: Vec<_> = std::fs::read_dir(&wire)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "bin"))
        {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let bytes = std::fs::read(f).unwrap();
            let whole = run(&bytes, &mut || usize::MAX);
            report += &format!(
                "{name}\t{}\t{}\t{}\n",
                whole.kind(),
                whole.messages.len(),
                whole.incomplete.len()
            );
            for seed in 1..=20u64 {
                let mut rng = common::Rng::new(seed);
                let split = run(&bytes, &mut || (rng.next() % 17) as usize + 1);
                assert_eq!(
                    split, whole,
                    "{name}: chunked (seed {seed}) differs from whole"
                );
            }
            if std::env::var_os("ASTM_PRINT_TABLE").is_some() {
                continue;
            }
            let Some(e) = table.iter().find(|e| e.file == name) else {
                panic!("{name} missing from EXPECTED.tsv");
            };
            assert_eq!(whole.kind(), e.kind, "{name}: outcome");
            assert_eq!(whole.messages.len(), e.messages, "{name}: messages");
            assert_eq!(whole.incomplete.len(), e.incomplete, "{name}: incomplete");
            for (i, pair) in e.pairs.iter().enumerate() {
                let p = recs.join(pair);
                if let Ok(want) = std::fs::read(&p) {
                    let got = whole.messages.get(i).or(whole.incomplete.get(i)).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(got),
                        String::from_utf8_lossy(&want),
                        "{name}: message {i} vs {pair}"
                    );
                }
            }
            seen += 1;
        }
    }
    if std::env::var_os("ASTM_PRINT_TABLE").is_some() {
        println!("{report}");
    }
    assert!(seen >= 6);
}

#[test]
fn record_layer_fixtures_parse() {
    let mut seen = 0;
    for (_, recs) in fixture_dirs() {
        let Ok(dir) = std::fs::read_dir(&recs) else {
            continue;
        };
        for f in dir.flatten().map(|e| e.path()) {
            if f.extension().map_or(true, |e| e != "astm") {
                continue;
            }
            let text = std::fs::read(&f).unwrap();
            let msgs: Vec<&[u8]> = split_messages(&text).collect();
            assert!(!msgs.is_empty(), "{f:?}");
            let s = summary(&text);
            assert!(s.records > 0, "{f:?}");
            for r in records(&text) {
                for field in r.fields() {
                    for rep in field.repeats() {
                        let _ = rep.components().count();
                    }
                }
            }
            let first = records(&text).next().unwrap();
            if first.record_type() == RecordType::Header {
                assert!(
                    msgs.len() == 1 || f.to_string_lossy().contains("fragment"),
                    "{f:?}: one message per file, got {}",
                    msgs.len()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 1);
}
