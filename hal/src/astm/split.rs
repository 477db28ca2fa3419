//! Where one ASTM message ends and the next begins — the one rule, applied a byte at a
//! time so the receiver never needs the message so far.
//!
//! Text is records, each ended by CR. A message
//! - ends **after** its L record (complete; [`MessageEnd::Headless`] and kept incomplete
//!   when it did not begin with an H record: its start was lost);
//! - ends **before** an H record (`H` and a delimiter) that arrives while it is open
//!   (complete as [`MessageEnd::NextHeader`]; incomplete when headless) — an instrument
//!   that sends no L. The H is recognised at its delimiter, one byte in; should a frame
//!   end right after the `H`, that byte is already committed to the open message, and the
//!   H record stays in it (no frame a sender cuts at 240 bytes of a record does that);
//! - ends at EOT, the receive timer or a lost line: the receiver decides that, not the text.
//!
//! CRs (and an LF after a CR) between messages belong to no message and are skipped. An L
//! record is `L` followed by a non-alphanumeric byte or by its CR (the field delimiter is
//! not known for sure until the H record has been read, and vendor records such as `LX`
//! exist).
//!
//! [`Splitter`] is the state between two bytes: a few counters and the first
//! [`HEADER_KEEP`] bytes of the message's H record, from which the [`Summary`] (sender, record
//! counts) is read when the message ends ([`summary`]). [`Scan`] walks a text from a given
//! state and yields [`Piece`]s: runs of text that open, continue or end messages; inside a
//! record it only looks for the CR. The receiver scans a frame once to check it (message
//! sizes) and again, from the same state, to hand the pieces to the driver: the result is
//! the same both times. A frame with Q record text in it is walked a third time
//! ([`walk_queries`]) to keep that text for the host query's specimen ids.

use super::record::{Delimiters, Record};
use super::CR;
use crate::session::{End, MessageEnd, Piece};

/// Bytes of an H record kept to read the sender from (H-5 lies well within them).
pub const HEADER_KEEP: usize = 128;
/// Longest sender name kept in a summary.
pub const SENDER_KEEP: usize = 64;
/// Bytes of a message's Q records kept (a host query's specimen ids are read from them).
pub const QUERY_KEEP: usize = 1024;

const LF: u8 = b'\n';

/// What a message's records were (for the stored message's meta).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// H-5, first component (sender name), escaped bytes, at most [`SENDER_KEEP`] bytes.
    pub sender: Option<heapless::Vec<u8, SENDER_KEEP>>,
    /// All records.
    pub records: u32,
    /// P records.
    pub patients: u32,
    /// O records.
    pub orders: u32,
    /// R records.
    pub results: u32,
    /// Q records (a host query).
    pub queries: u32,
    /// The message's delimiters (from its H record; default `|\^&`).
    pub delimiters: Delimiters,
}

/// Record counts of the open message.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    records: u32,
    patients: u32,
    orders: u32,
    results: u32,
    queries: u32,
}

/// The Q records' text of one message (CR-separated, at most [`QUERY_KEEP`] bytes), kept
/// as its frames are committed: a host query's specimen ids are read from it.
#[derive(Debug, Clone, Default)]
pub struct QueryText {
    text: heapless::Vec<u8, QUERY_KEEP>,
    /// Some Q record text did not fit.
    cut: bool,
}

impl QueryText {
    /// No Q record byte kept.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Forget the text.
    pub fn clear(&mut self) {
        self.text.clear();
        self.cut = false;
    }

    fn push(&mut self, b: u8) {
        if self.text.push(b).is_err() {
            self.cut = true;
        }
    }

    /// The specimens the Q records ask about (see [`crate::query`]).
    pub fn specimens(&self, delims: Delimiters, component: Option<u32>) -> crate::query::Specimens {
        let mut s = crate::query::astm_specimens(&self.text, delims, component);
        s.truncated |= self.cut;
        s
    }
}

/// The boundary state between two bytes of a text.
#[derive(Debug, Clone, Default)]
pub struct Splitter {
    /// A message is open (it has at least one byte).
    open: bool,
    /// The open message began with an H record.
    headed: bool,
    /// Bytes of the open message.
    len: usize,
    /// Bytes of the current record so far (0: at a record start).
    rec_len: usize,
    rec_type: u8,
    rec_second: u8,
    /// The first bytes of the message's H record.
    header: heapless::Vec<u8, HEADER_KEEP>,
    counts: Counts,
    /// A Q record began since this was last cleared.
    q_started: bool,
    /// Keep the summary of each message that ends in `finished` (else it is not read).
    summaries: bool,
    finished: Option<Summary>,
}

/// What one byte did.
enum Step {
    /// Part of the open message (or skipped between messages).
    In,
    /// The byte before this one began an H record: the open message ended before it, and
    /// a new message began with it.
    BeforePrevious(End),
    /// The open message ended with this byte.
    After(End),
}

/// A delimiter byte in an H record (`H|`): anything but a letter, a digit, CR or LF.
fn header_delimiter(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || b == CR || b == LF)
}

impl Splitter {
    /// A message is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Bytes of the open message.
    pub fn open_len(&self) -> usize {
        self.len
    }

    /// Inside a record (its CR not yet seen).
    pub fn in_record(&self) -> bool {
        self.rec_len > 0
    }

    /// A Q record began since [`Splitter::clear_q_started`]: the text scanned from this
    /// state holds a host query (see [`walk_queries`]).
    pub fn q_started(&self) -> bool {
        self.q_started
    }

    /// See [`Splitter::q_started`].
    pub fn clear_q_started(&mut self) {
        self.q_started = false;
    }

    /// True if `b` at this point would be skipped (between messages).
    fn skips(&self, b: u8) -> bool {
        !self.open && self.rec_len == 0 && (b == CR || b == LF)
    }

    /// Close the open message, if any; returns whether it began with an H record, and its
    /// summary.
    pub fn close(&mut self) -> Option<(bool, Summary)> {
        if !self.open {
            return None;
        }
        let headed = self.headed;
        let s = self.take_summary();
        *self = Splitter {
            summaries: self.summaries,
            ..Splitter::default()
        };
        Some((headed, s))
    }

    fn take_summary(&mut self) -> Summary {
        let c = core::mem::take(&mut self.counts);
        let mut s = Summary {
            sender: None,
            records: c.records,
            patients: c.patients,
            orders: c.orders,
            results: c.results,
            queries: c.queries,
            delimiters: Delimiters::default(),
        };
        if let Some(d) = Delimiters::from_header(&self.header) {
            s.delimiters = d;
            let sender = Record::new(&self.header, d)
                .field(5)
                .and_then(|f| f.component(1))
                .filter(|c| !c.is_empty());
            if let Some(c) = sender {
                let keep = &c[..c.len().min(SENDER_KEEP)];
                s.sender = heapless::Vec::from_slice(keep).ok();
            }
        }
        s
    }

    /// Ends the open message as `headed_end` (incomplete `Headless` without an H record).
    fn end(&mut self, headed_end: MessageEnd) -> End {
        let end = if self.headed {
            End::Complete(headed_end)
        } else {
            End::Incomplete(MessageEnd::Headless)
        };
        if self.summaries {
            self.finished = Some(self.take_summary());
        } else {
            self.counts = Counts::default();
        }
        self.open = false;
        self.headed = false;
        self.len = 0;
        self.header.clear();
        end
    }

    fn count(&mut self, rec_type: u8, by: i32) {
        let c = &mut self.counts;
        let add = |v: &mut u32| *v = v.saturating_add_signed(by);
        add(&mut c.records);
        match rec_type {
            b'P' => add(&mut c.patients),
            b'O' => add(&mut c.orders),
            b'R' => add(&mut c.results),
            b'Q' => {
                add(&mut c.queries);
                self.q_started = true;
            }
            _ => {}
        }
    }

    /// One byte. `can_cut_back`: the previous byte is in the text being scanned, so a
    /// message may still end before it.
    fn step(&mut self, b: u8, can_cut_back: bool, mut q: Option<&mut QueryText>) -> Step {
        let mut keep = |rec_type: u8, b: u8| {
            if rec_type == b'Q' {
                if let Some(q) = q.as_deref_mut() {
                    q.push(b);
                }
            }
        };
        if self.skips(b) {
            return Step::In;
        }
        self.len += 1;
        if self.rec_len == 0 && b != CR && b != LF {
            // A record starts.
            if !self.open {
                self.open = true;
                self.headed = b == b'H';
                self.len = 1;
                self.header.clear();
            }
            self.rec_type = b;
            self.rec_second = 0;
            self.rec_len = 1;
            self.count(b, 1);
            keep(b, b);
            if b == b'H' && self.len == 1 {
                let _ = self.header.push(b);
            }
            return Step::In;
        }
        if b == CR {
            if self.rec_len > 0 {
                keep(self.rec_type, CR);
            }
            let (len, ty, second) = (self.rec_len, self.rec_type, self.rec_second);
            self.rec_len = 0;
            let is_l = len > 0 && ty == b'L' && (len == 1 || !second.is_ascii_alphanumeric());
            if is_l {
                return Step::After(self.end(MessageEnd::Terminator));
            }
            return Step::In;
        }
        if self.rec_len == 0 {
            // An LF at a record start inside a message: kept, starts nothing.
            return Step::In;
        }
        self.rec_len += 1;
        keep(self.rec_type, b);
        let mut step = Step::In;
        if self.rec_len == 2 {
            self.rec_second = b;
            // `H` and a delimiter after other records: a new message begins at the H.
            if self.rec_type == b'H' && header_delimiter(b) && self.len > 2 && can_cut_back {
                self.count(b'H', -1);
                self.len -= 2;
                let end = self.end(MessageEnd::NextHeader);
                self.open = true;
                self.headed = true;
                self.len = 2;
                self.count(b'H', 1);
                let _ = self.header.push(b'H');
                step = Step::BeforePrevious(end);
            }
        }
        // Keep the first bytes of the message's first H record, for the sender.
        if self.keeps_header() {
            let _ = self.header.push(b);
        }
        step
    }

    /// The message's H record is being read and its head is still kept, byte by byte.
    fn heading(&self) -> bool {
        self.rec_type == b'H' && self.header.len() == self.rec_len && self.len == self.rec_len
    }

    /// The byte just stepped goes to the kept head of the message's H record.
    fn keeps_header(&self) -> bool {
        self.rec_type == b'H'
            && self.header.len() + 1 == self.rec_len
            && self.header.len() < HEADER_KEEP
            && self.len == self.rec_len
    }
}

/// Walks a text from a [`Splitter`] state, yielding pieces; see the module doc.
#[derive(Debug, Clone)]
pub struct Scan<'a> {
    text: &'a [u8],
    /// Append a CR after the text (an ETX frame whose record lacks one).
    add_cr: bool,
    pos: usize,
    start: usize,
    begins: bool,
    split: Splitter,
    max_message: usize,
    too_long: bool,
    done: bool,
}

impl<'a> Scan<'a> {
    /// Scan `text` from state `split`. With `etx`, a record left open at the end of the
    /// text is closed by a CR, as if the text ended with one.
    pub fn new(text: &'a [u8], etx: bool, split: Splitter, max_message: usize) -> Self {
        let add_cr = etx && text.last() != Some(&CR) && (!text.is_empty() || split.in_record());
        Scan {
            text,
            add_cr,
            pos: 0,
            start: 0,
            begins: !split.open,
            split,
            max_message,
            too_long: false,
            done: false,
        }
    }

    /// The state after the whole text (run the scan to its end first).
    pub fn state(&self) -> &Splitter {
        &self.split
    }

    /// Some message grew past `max_message` (run the scan to its end first).
    pub fn too_long(&self) -> bool {
        self.too_long
    }

    /// Runs to the end; returns (pieces, messages completed or closed).
    pub fn finish(&mut self) -> (usize, usize) {
        let (mut pieces, mut ends) = (0, 0);
        for p in self.by_ref() {
            pieces += 1;
            ends += usize::from(p.end.is_some());
        }
        (pieces, ends)
    }

    fn piece(&self, to: usize, cr: bool, end: Option<End>) -> Piece<'a> {
        Piece {
            text: self.text.get(self.start..to).unwrap_or(&[]),
            cr,
            begins: self.begins,
            end,
        }
    }
}

impl<'a> Iterator for Scan<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        if self.done {
            return None;
        }
        loop {
            // Inside a record, past the bytes that decide anything (its type, the byte after
            // it, the H record's kept head), every byte up to the CR just counts.
            if self.split.rec_len >= 2 && !self.split.heading() {
                let rest = self.text.get(self.pos..).unwrap_or(&[]);
                let n = rest.iter().position(|&b| b == CR).unwrap_or(rest.len());
                if n > 0 {
                    self.split.len += n;
                    self.split.rec_len += n;
                    self.pos += n;
                    if self.split.len > self.max_message {
                        self.too_long = true;
                    }
                    continue;
                }
            }
            let (b, virtual_cr) = match self.text.get(self.pos) {
                Some(&b) => (b, false),
                None if self.add_cr => (CR, true),
                None => {
                    self.done = true;
                    // What is left continues (or opens) the message without ending it.
                    let rest = self.text.len() > self.start;
                    return rest.then(|| self.piece(self.text.len(), false, None));
                }
            };
            if self.split.skips(b) {
                if virtual_cr {
                    self.add_cr = false;
                } else {
                    self.pos += 1;
                }
                self.start = self.pos;
                self.begins = true;
                continue;
            }
            let can_cut_back = self.pos > self.start;
            let step = self.split.step(b, can_cut_back, None);
            if self.split.len > self.max_message {
                self.too_long = true;
            }
            match step {
                Step::In => {
                    if virtual_cr {
                        // The CR ended a record but not the message.
                        self.add_cr = false;
                        self.done = true;
                        return Some(self.piece(self.text.len(), true, None));
                    }
                    self.pos += 1;
                }
                Step::BeforePrevious(end) => {
                    // The previous byte (an H) opened the next message: the piece up to it
                    // ends the last one.
                    let p = self.piece(self.pos - 1, false, Some(end));
                    self.start = self.pos - 1;
                    self.begins = true;
                    self.pos += 1;
                    return Some(p);
                }
                Step::After(end) => {
                    let p = if virtual_cr {
                        self.add_cr = false;
                        self.piece(self.text.len(), true, Some(end))
                    } else {
                        self.pos += 1;
                        self.piece(self.pos, false, Some(end))
                    };
                    self.start = self.pos;
                    self.begins = true;
                    if virtual_cr {
                        self.done = true;
                    }
                    return Some(p);
                }
            }
        }
    }
}

/// The messages of a whole text, by the rule above: each slice keeps its CRs; a trailing
/// open message with more than CR/LF in it is included.
pub fn split_messages(text: &[u8]) -> Messages<'_> {
    Messages {
        text,
        scan: Scan::new(text, false, Splitter::default(), usize::MAX),
        open: None,
        offset: 0,
        done: false,
    }
}

/// Iterator of [`split_messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    text: &'a [u8],
    scan: Scan<'a>,
    open: Option<usize>,
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        for p in self.scan.by_ref() {
            // Pieces of one scan are contiguous sub-slices of `text`.
            let at = p.text.as_ptr() as usize - self.text.as_ptr() as usize;
            let start = if p.begins {
                at
            } else {
                self.open.unwrap_or(at)
            };
            self.offset = at + p.text.len();
            if p.end.is_some() {
                self.open = None;
                return self.text.get(start..self.offset);
            }
            self.open = Some(start);
        }
        self.done = true;
        let s = self.open.take()?;
        let tail = self.text.get(s..self.offset)?;
        tail.iter().any(|&b| b != CR && b != LF).then_some(tail)
    }
}

/// The summary of a text's first message (or of a whole transmission: counts add up over
/// every message, the sender is the first message's).
pub fn summary(text: &[u8]) -> Summary {
    let mut total = Summary::default();
    let add = |s: Summary, total: &mut Summary| {
        if total.sender.is_none() {
            total.sender = s.sender;
        }
        total.records += s.records;
        total.patients += s.patients;
        total.orders += s.orders;
        total.results += s.results;
        total.queries += s.queries;
    };
    let from = Splitter {
        summaries: true,
        ..Splitter::default()
    };
    let mut scan = Scan::new(text, false, from, usize::MAX);
    while scan.next().is_some() {
        if let Some(s) = scan.split.finished.take() {
            add(s, &mut total);
        }
    }
    let mut last = scan.state().clone();
    if let Some((_, s)) = last.close() {
        add(s, &mut total);
    }
    total
}

/// The host queries in a text that continues from `from` (the state before it, as for a
/// [`Scan`]; `etx` likewise): `q` holds the open message's Q record text so far and is
/// left holding the text's last open message's; `done` gets each message that ends with
/// Q records in it (complete or not) with its summary and Q text. Call it only for a text
/// in which a Q record goes on or begins (see [`Splitter::q_started`]): most frames hold
/// none, and the scan that cuts pieces keeps no Q text.
pub fn walk_queries(
    text: &[u8],
    etx: bool,
    from: &Splitter,
    q: &mut QueryText,
    mut done: impl FnMut(End, &Summary, &QueryText),
) {
    let mut split = from.clone();
    split.summaries = true;
    let add_cr = etx && text.last() != Some(&CR) && (!text.is_empty() || split.in_record());
    let cr = add_cr.then_some(CR);
    for (i, b) in text.iter().copied().chain(cr).enumerate() {
        if split.skips(b) {
            continue;
        }
        let end = match split.step(b, i > 0, Some(q)) {
            Step::In => continue,
            Step::BeforePrevious(end) | Step::After(end) => end,
        };
        if let Some(s) = split.finished.take() {
            if s.queries > 0 {
                done(end, &s, q);
            }
        }
        q.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (text with its CR, begins, ends, how) of each piece.
    type Seen = heapless::Vec<(heapless::Vec<u8, 64>, bool, bool, Option<End>), 8>;

    fn pieces(text: &[u8], etx: bool, from: Splitter) -> (Seen, Splitter) {
        let mut scan = Scan::new(text, etx, from, usize::MAX);
        let mut v = heapless::Vec::new();
        for p in scan.by_ref() {
            let mut t = heapless::Vec::from_slice(p.text).unwrap();
            if p.cr {
                t.push(CR).unwrap();
            }
            v.push((t, p.begins, p.end.is_some(), p.end)).unwrap();
        }
        (v, scan.state().clone())
    }

    #[test]
    fn one_frame_with_two_messages_and_the_start_of_a_third() {
        let (v, st) = pieces(
            b"H|\\^&\rL|1\rH|\\^&|||Snd\rL|1\rH|\\^&\rP|1",
            true,
            Splitter::default(),
        );
        assert_eq!(v.len(), 3);
        assert_eq!(&v[0].0[..], b"H|\\^&\rL|1\r");
        assert!(v[0].1 && v[0].2);
        assert_eq!(v[0].3, Some(End::Complete(MessageEnd::Terminator)));
        assert_eq!(&v[1].0[..], b"H|\\^&|||Snd\rL|1\r");
        assert_eq!(
            &v[2].0[..],
            b"H|\\^&\rP|1\r",
            "the ETX frame's open record gets its CR"
        );
        assert!(v[2].1 && !v[2].2);
        assert!(st.is_open() && !st.in_record());
    }

    #[test]
    fn a_record_split_across_frames_and_an_l_in_the_next() {
        let (v, st) = pieces(b"H|\\^&|||Cobas^1\rR|1|^^^GL", false, Splitter::default());
        assert_eq!(v.len(), 1);
        assert!(st.in_record());
        let (v, st) = pieces(b"U|5\rL|1|N\r", true, st);
        assert_eq!(v.len(), 1);
        assert!(!v[0].1, "continues the open message");
        assert_eq!(v[0].3, Some(End::Complete(MessageEnd::Terminator)));
        assert!(!st.is_open());
        let sum = summary(b"H|\\^&|||Cobas^1\rR|1|^^^GLU|5\rL|1|N\r");
        assert_eq!(sum.sender.as_deref(), Some(&b"Cobas"[..]));
        assert_eq!((sum.records, sum.results), (3, 1));
    }

    #[test]
    fn a_header_without_a_preceding_l_ends_the_message() {
        let (v, _) = pieces(b"H|\\^&\rP|1\rH|\\^&\rL\r", true, Splitter::default());
        assert_eq!(v.len(), 2);
        assert_eq!(&v[0].0[..], b"H|\\^&\rP|1\r");
        assert_eq!(v[0].3, Some(End::Complete(MessageEnd::NextHeader)));
        assert_eq!(v[1].3, Some(End::Complete(MessageEnd::Terminator)));
    }

    #[test]
    fn headless_and_between_messages() {
        let (v, _) = pieces(b"\r\rR|1|x\rL|1\r\r", true, Splitter::default());
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(&v[0].0[..], b"R|1|x\rL|1\r");
        assert_eq!(v[0].3, Some(End::Incomplete(MessageEnd::Headless)));
        // `LX` is not a terminator.
        let (v, st) = pieces(b"H|\\^&\rLX|1\r", false, Splitter::default());
        assert!(v[0].3.is_none() && st.is_open());
    }

    #[test]
    fn too_long_is_reported() {
        let mut scan = Scan::new(b"H|\\^&\rP|1\r", false, Splitter::default(), 8);
        scan.finish();
        assert!(scan.too_long());
        let mut scan = Scan::new(b"H|\\^&\rL\rH\r", false, Splitter::default(), 8);
        scan.finish();
        assert!(!scan.too_long(), "each message counts alone");
    }

    #[test]
    fn split_whole_texts() {
        let t = b"H|\\^&\rL|1\rH|\\^&\rP|1\rH|\\^&\rL|1\r";
        let m: heapless::Vec<&[u8], 4> = split_messages(t).collect();
        assert_eq!(
            m,
            [&b"H|\\^&\rL|1\r"[..], b"H|\\^&\rP|1\r", b"H|\\^&\rL|1\r"]
        );
        let m: heapless::Vec<&[u8], 4> = split_messages(b"H|\\^&\rP|1\r\r").collect();
        assert_eq!(m, [&b"H|\\^&\rP|1\r\r"[..]]);
        assert_eq!(split_messages(b"\r\n\r").count(), 0);
        let s = summary(b"H|\\^&|||Sender^1.0\rP|1||PID\rO|1|S1||^^^A\\^^^B\rR|1|^^^A|5\rL|1|N\r");
        assert_eq!(s.sender.as_deref(), Some(&b"Sender"[..]));
        assert_eq!((s.patients, s.orders, s.results, s.queries), (1, 1, 1, 0));
    }
}
