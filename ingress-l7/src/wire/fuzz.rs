//! Fuzz targets for the chunked-body scanner, which reads what endpoints send (and what an
//! HTTP/2 client's body becomes on its way to an HTTP/1.1 endpoint), and [`Choices`], the reader
//! of structured inputs the head targets ([`crate::front::h1::fuzz`]) use too. `fuzz/` runs them
//! under libfuzzer and `tests/fuzz_props.rs` on stable; both panic when a property fails, not
//! only when the scanner does.
//!
//! A child of [`super`] so that it sees the scanner's state without widening it.

use bytes::BytesMut;

use super::{ChunkState, Chunked};

/// Reads an input as a stream of choices; past its end every choice is 0.
pub(crate) struct Choices<'a>(pub(crate) &'a [u8]);

impl Choices<'_> {
    pub(crate) fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    pub(crate) fn pick<'v>(&mut self, from: &[&'v str]) -> &'v str {
        from[self.below(from.len())]
    }

    pub(crate) fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Scan `buf` in pieces of `step` bytes (the last piece shorter): what was taken, the chunks'
/// data, and whether the body ended.
fn scan_in_steps(buf: &[u8], step: usize) -> (Option<usize>, Vec<u8>, bool) {
    let mut c = Chunked::default();
    let mut data = BytesMut::new();
    let mut taken = 0;
    for piece in buf.chunks(step.max(1)) {
        match c.scan_into(piece, Some(&mut data)) {
            None => return (None, data.to_vec(), false),
            Some(n) => {
                taken += n;
                if c.state == ChunkState::Done {
                    assert!(n <= piece.len());
                    break;
                }
                assert_eq!(n, piece.len(), "an unfinished body left bytes of a piece");
            }
        }
    }
    (Some(taken), data.to_vec(), c.state == ChunkState::Done)
}

/// A chunked body from an endpoint (or an HTTP/2 client's request turned HTTP/1.1): scanned
/// whole or in pieces of any size, the same verdict, the same end and the same data.
pub fn chunked(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = scan_in_steps(body, body.len());
    let pieces = scan_in_steps(body, usize::from(step % 7) + 1);
    if whole.0.is_none() {
        assert_eq!(pieces.0, None, "refused whole but not in pieces");
    } else {
        assert_eq!(whole, pieces, "a different scan in pieces of {}", step % 7 + 1);
    }
}

/// A well-formed chunked body built from choices (sizes in any case with leading zeros,
/// extensions, trailers) then bytes of the next message: the scanner gives back exactly the
/// data and stops exactly at the body's end.
pub fn chunked_encode(data: &[u8]) {
    let mut c = Choices(data);
    let (mut wire, mut want) = (Vec::new(), Vec::new());
    let mut n = 0u8;
    while !c.done() && c.below(6) != 0 {
        n = n.wrapping_add(1);
        let len = 1 + c.below(40);
        let chunk: Vec<u8> = (0..len).map(|i| b'a' + ((i + usize::from(n)) % 26) as u8).collect();
        let size = match c.below(3) {
            0 => format!("{len:x}"),
            1 => format!("{len:X}"),
            _ => format!("{len:08x}"),
        };
        wire.extend_from_slice(size.as_bytes());
        wire.extend_from_slice(c.pick(&["", ";ext", ";a=b;c=\"d\"", " ", "\t;x"]).as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&chunk);
        wire.extend_from_slice(b"\r\n");
        want.extend_from_slice(&chunk);
    }
    wire.extend_from_slice(c.pick(&["0", "000", "0;last"]).as_bytes());
    wire.extend_from_slice(b"\r\n");
    for _ in 0..c.below(3) {
        wire.extend_from_slice(c.pick(&["X-T: 1\r\n", "Checksum: abc\r\n", "E:\r\n"]).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let end = wire.len();
    wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
    for step in [wire.len(), 1, 1 + c.below(13)] {
        let (taken, got, done) = scan_in_steps(&wire, step);
        assert_eq!(
            (taken, done),
            (Some(end), true),
            "{:?} in pieces of {step}",
            String::from_utf8_lossy(&wire)
        );
        assert_eq!(got, want);
    }
}
