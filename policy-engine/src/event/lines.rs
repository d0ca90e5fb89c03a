//! JSON Lines: one event per line, blank lines skipped, a bad line reported with its number and
//! skipped so that it never stops a replay or an agent.

use std::io::BufRead;

use super::ThreatEvent;

/// A line that is not a valid event (or could not be read).
///
/// ```
/// use policy_engine::event::parse_lines;
/// let input = b"{\"type\":\"port_scan\"}\n\n{\"pid\":-1}\n";
/// let results: Vec<_> = parse_lines(input).collect();
/// assert_eq!(results.len(), 2);
/// assert_eq!(
///     results[1].as_ref().unwrap_err().to_string(),
///     "line 3: field `pid`: expected an integer from 0 to 4294967295, found `-1` at column 9"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Events of an in-memory JSON Lines text, without copying lines.
pub fn parse_lines(input: &[u8]) -> SliceLines<'_> {
    SliceLines {
        rest: input,
        line: 0,
    }
}

/// Iterator returned by [`parse_lines`].
#[derive(Debug, Clone)]
pub struct SliceLines<'a> {
    rest: &'a [u8],
    line: usize,
}

impl Iterator for SliceLines<'_> {
    type Item = Result<ThreatEvent, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let (line, rest) = match memchr_newline(self.rest) {
                Some(end) => (
                    self.rest.get(..end).unwrap_or_default(),
                    self.rest.get(end + 1..).unwrap_or_default(),
                ),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            self.line += 1;
            if let Some(result) = parse_line(line, self.line) {
                return Some(result);
            }
        }
        None
    }
}

/// Events read line by line from any buffered reader (a file, stdin, a pipe).
///
/// ```
/// use policy_engine::event::EventLines;
/// let input = &b"{\"type\":\"malware\",\"pid\":7}\nnot json\n"[..];
/// let mut lines = EventLines::new(input);
/// assert_eq!(lines.next().unwrap().unwrap().pid, Some(7));
/// assert_eq!(lines.next().unwrap().unwrap_err().line, 2);
/// assert!(lines.next().is_none());
/// ```
#[derive(Debug)]
pub struct EventLines<R> {
    reader: R,
    buffer: Vec<u8>,
    line: usize,
    done: bool,
}

impl<R: BufRead> EventLines<R> {
    /// Reads events from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buffer: Vec::with_capacity(1024),
            line: 0,
            done: false,
        }
    }

    /// Number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }
}

impl<R: BufRead> Iterator for EventLines<R> {
    type Item = Result<ThreatEvent, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buffer.clear();
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.line += 1;
                    if let Some(result) = parse_line(&self.buffer, self.line) {
                        return Some(result);
                    }
                }
                Err(err) => {
                    // A read error ends the stream: retrying a broken reader would loop forever.
                    self.done = true;
                    return Some(Err(LineError {
                        line: self.line + 1,
                        message: format!("cannot read: {err}"),
                    }));
                }
            }
        }
        None
    }
}

/// Parses one line, or `None` for a blank one.
fn parse_line(line: &[u8], number: usize) -> Option<Result<ThreatEvent, LineError>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(ThreatEvent::from_json(line).map_err(|err| {
        // The line number is ours: inside a line, only the column means something.
        let message = match err.message.rsplit_once(" at line 1 column ") {
            Some((text, column)) => format!("{text} at column {column}"),
            None => err.message,
        };
        LineError {
            line: number,
            message,
        }
    }))
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}
