//! The lines of a JSON Lines file, read one at a time with a bound on each, so that a file that
//! is not one (`/dev/urandom`, `/dev/zero`, a pipe that never ends) is refused after a bounded
//! read instead of read until memory runs out. A UTF-8 byte order mark at the start of the
//! file is skipped, as most JSON Lines readers do.

use std::io::{BufRead, Read};

/// The longest line read: 1 GiB. A pairs line holds one pair, far less than this.
pub const MAX_LINE: u64 = 1 << 30;

/// How much of a line is read before its first byte other than whitespace is looked at: a
/// line of JSON Lines holds an object, so one that starts with anything but `{` is read no
/// further (its parse fails on what was read).
const PEEK: u64 = 1 << 16;

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The lines of a reader, without their line breaks, each at most `max` bytes.
pub struct JsonLines<R> {
    reader: R,
    max: u64,
    /// Lines read so far.
    line: usize,
    /// Bytes read so far.
    bytes: u64,
    done: bool,
}

impl<R: BufRead> JsonLines<R> {
    /// The lines of `reader`, each at most [`MAX_LINE`] bytes.
    pub fn new(reader: R) -> Self {
        Self::with_max(reader, MAX_LINE)
    }

    /// The lines of `reader`, each at most `max` bytes.
    pub fn with_max(reader: R, max: u64) -> Self {
        JsonLines {
            reader,
            max,
            line: 0,
            bytes: 0,
            done: false,
        }
    }

    /// Whether nothing at all was read (an empty file), once the lines are exhausted.
    pub fn was_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Reads the next line into `buf` (with its line break, when it has one): `Ok(false)` at
    /// the end of the input.
    fn read_line(&mut self, buf: &mut Vec<u8>) -> Result<bool, String> {
        let line = self.line + 1;
        let io = |e: std::io::Error| format!("line {line}: cannot be read: {e}");
        let peek = PEEK.min(self.max + 1);
        let mut got = (&mut self.reader)
            .take(peek)
            .read_until(b'\n', buf)
            .map_err(io)?;
        if got == 0 {
            return Ok(false);
        }
        let first = buf.iter().find(|b| !b.is_ascii_whitespace());
        let opens = matches!(first, Some(b'{') | None) || (line == 1 && buf.starts_with(BOM));
        if buf.last() != Some(&b'\n') && got as u64 == peek && opens {
            let rest = self.max + 1 - peek;
            got += (&mut self.reader)
                .take(rest)
                .read_until(b'\n', buf)
                .map_err(io)?;
        }
        self.bytes += got as u64;
        if buf.len() as u64 > self.max && buf.last() != Some(&b'\n') {
            return Err(format!(
                "line {line} is longer than {} bytes, the most a line may have: is this a JSON \
                 Lines file?",
                self.max
            ));
        }
        Ok(true)
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    /// A line without its line break (and line 1 without a byte order mark), or the error
    /// that names the line which could not be read.
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        match self.read_line(&mut buf) {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => {
                self.line += 1;
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if self.line == 1 && buf.starts_with(BOM) {
                    buf.drain(..BOM.len());
                }
                Some(Ok(buf))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8], max: u64) -> Vec<Result<Vec<u8>, String>> {
        JsonLines::with_max(bytes, max).collect()
    }

    #[test]
    fn lines_come_without_their_breaks_and_a_bom_is_skipped() {
        let got = lines(b"\xEF\xBB\xBF{\"a\":1}\n\n{}", 100);
        let want: Vec<Result<Vec<u8>, String>> = vec![
            Ok(b"{\"a\":1}".to_vec()),
            Ok(Vec::new()),
            Ok(b"{}".to_vec()),
        ];
        assert_eq!(got, want);
        // Only at the start of the file.
        let got = lines(b"{}\n\xEF\xBB\xBF{}\n", 100);
        assert_eq!(got[1], Ok(b"\xEF\xBB\xBF{}".to_vec()));
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn a_line_over_the_bound_is_refused_after_the_bound() {
        let long = format!("{{\"x\": [{}]}}\n", "1,".repeat(50));
        let got = lines(long.as_bytes(), 40);
        assert_eq!(got.len(), 1);
        let err = got[0].clone().unwrap_err();
        assert!(err.contains("line 1 is longer than 40 bytes"), "{err}");
        // A line of exactly the bound is read.
        let fits = format!("{{{}}}", " ".repeat(38));
        assert_eq!(lines(fits.as_bytes(), 40), vec![Ok(fits.into_bytes())]);
    }

    #[test]
    fn a_line_that_cannot_open_an_object_stops_at_the_peek() {
        // Endless zeros: one line of the peek's length, then the next one.
        let zeros = std::io::repeat(0).take(4 * PEEK);
        let mut reader = JsonLines::new(std::io::BufReader::new(zeros));
        let first = reader.next().unwrap().unwrap();
        assert_eq!(first.len() as u64, PEEK);
    }
}
