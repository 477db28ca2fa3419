//! MSH view + ACK builder: `new_checked` never panics; once it succeeds no accessor
//! panics, and every ACK built from the view re-parses with the same separators, swapped
//! sender/receiver and MSA-2 equal to the original MSH-10. Unescape never panics and
//! escape/unescape round-trip with the message's own delimiters (non-alphanumeric escape
//! character).
#![no_main]
use labagent_hal::hl7::ack::{
    build_ack, decide_ack, AckCode, AckError, AckMode, AckParams, Outcome,
};
use labagent_hal::hl7::charset::encoding_label;
use labagent_hal::hl7::escape::{escape, unescape};
use labagent_hal::hl7::msh::MshView;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(v) = MshView::new_checked(data) else {
        return;
    };
    for n in 0..25 {
        let f = v.field(n);
        let _ = v.component(n, n % 5);
        let d = v.delimiters();
        let _ = unescape(f, &d);
        // Round trip holds unless the escape character is itself a letter or digit that
        // escape codes use (`X`, `E`, ...): a pathological but accepted MSH-2.
        if !d.escape.is_ascii_alphanumeric() {
            assert_eq!(unescape(&escape(f, &d), &d), f);
        }
    }
    let _ = (
        v.message_type(),
        v.segments().count(),
        encoding_label(v.charset()),
    );
    for outcome in [
        Outcome::Accepted,
        Outcome::StoreRefused,
        Outcome::Unparseable,
    ] {
        for mode in [AckMode::Original, AckMode::Enhanced] {
            let _ = decide_ack(Some(&v), mode, outcome);
        }
    }
    let p = AckParams {
        timestamp: b"20240101120000",
        control_id: b"X1",
        text: Some(b"t|^~\\&#\r\n"),
        error: Some(AckError::STORE_REFUSED),
    };
    for code in [AckCode::AA, AckCode::CE] {
        let ack = build_ack(&v, code, &p);
        let a = MshView::new_checked(&ack).expect("ACK must re-parse");
        assert_eq!(a.delimiters(), v.delimiters());
        assert_eq!(a.sending_application(), v.receiving_application());
        assert_eq!(a.receiving_facility(), v.sending_facility());
        let msa = a.segments().nth(1).expect("MSA");
        let f = v.delimiters().field;
        let mut parts = msa.split(|b| *b == f);
        assert_eq!(parts.next(), Some(&b"MSA"[..]));
        assert_eq!(parts.next(), Some(code.as_bytes()));
        assert_eq!(parts.next().unwrap_or(&[]), v.control_id());
    }
});
