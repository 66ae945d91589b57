//! Reading input files, plain or gzip (detected by content, not by name),
//! as records: lines, or one whole CloudTrail `{"Records":[...]}` document.
//! Records are read into one reusable buffer per batch, so decoded events
//! borrow from it without allocating per event.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::Path;

/// Why an input file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read input {path}: {source}")]
pub struct SourceError {
    pub path: String,
    pub source: std::io::Error,
}

/// One record of a batch: where it is in the buffer and where it came from.
#[derive(Debug, Clone)]
pub struct RecordSpan {
    pub range: Range<usize>,
    /// 1-based line number of the record's start.
    pub line: u64,
    /// Whether the record was longer than the limit and cut short.
    pub oversized: Option<usize>,
}

/// Streams the records of one input.
pub struct RecordReader {
    name: String,
    reader: Box<dyn BufRead + Send>,
    whole_document: bool,
    line: u64,
    done: bool,
    max_record_bytes: usize,
    /// A batch closes once it holds this many bytes of records.
    max_batch_bytes: usize,
    /// A whole document is read up to one byte past this: enough for the
    /// decoder to reject it as too large, never more.
    max_document_bytes: usize,
    /// Bytes consumed so far (compressed bytes are not known; these are
    /// decompressed bytes).
    pub bytes_read: u64,
}

impl RecordReader {
    /// Opens a file (`-` for standard input), sniffing gzip and whole-file
    /// CloudTrail documents.
    pub fn open(path: &Path, max_record_bytes: usize) -> Result<RecordReader, SourceError> {
        let name = path.display().to_string();
        let wrap = |source: std::io::Error| SourceError {
            path: name.clone(),
            source,
        };
        let raw: Box<dyn Read + Send> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(path).map_err(wrap)?)
        };
        let mut buffered = BufReader::with_capacity(1 << 16, raw);
        let head = buffered.fill_buf().map_err(wrap)?;
        let reader: Box<dyn BufRead + Send> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::bufread::MultiGzDecoder::new(buffered),
            ))
        } else {
            Box::new(buffered)
        };
        let mut record_reader = RecordReader {
            name: name.clone(),
            reader,
            whole_document: false,
            line: 0,
            done: false,
            max_record_bytes,
            max_batch_bytes: crate::decode::DEFAULT_MAX_BATCH_BYTES,
            max_document_bytes: crate::decode::DEFAULT_MAX_DOCUMENT_BYTES,
            bytes_read: 0,
        };
        let head = record_reader.reader.fill_buf().map_err(wrap)?;
        record_reader.whole_document = crate::decode::cloudtrail::is_records_document(head);
        Ok(record_reader)
    }

    /// Bounds batches and whole documents by bytes (see
    /// [`crate::decode::Decoder::max_batch_bytes`] and
    /// [`crate::decode::Decoder::max_document_bytes`]).
    pub fn with_byte_budgets(mut self, max_batch_bytes: usize, max_document_bytes: usize) -> RecordReader {
        self.max_batch_bytes = max_batch_bytes.max(1);
        self.max_document_bytes = max_document_bytes;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads up to `max_records` records into `buffer` (cleared first) and
    /// `spans`. Returns false when the input is exhausted and nothing was read.
    pub fn next_batch(
        &mut self,
        buffer: &mut Vec<u8>,
        spans: &mut Vec<RecordSpan>,
        max_records: usize,
    ) -> Result<bool, SourceError> {
        buffer.clear();
        spans.clear();
        if self.done {
            return Ok(false);
        }
        let wrap = |source: std::io::Error, name: &str| SourceError {
            path: name.to_string(),
            source,
        };
        if self.whole_document {
            // A CloudTrail document is one record; the record limit applies
            // per event inside it, the document limit to the whole. A byte
            // past the document limit is enough for the decoder to reject
            // it, so a huge (or endlessly inflating) file is never read in.
            let cap = u64::try_from(self.max_document_bytes)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            (&mut self.reader)
                .take(cap)
                .read_to_end(buffer)
                .map_err(|err| wrap(err, &self.name))?;
            self.bytes_read += buffer.len() as u64;
            spans.push(RecordSpan {
                range: 0..buffer.len(),
                line: 1,
                oversized: None,
            });
            self.done = true;
            return Ok(!buffer.is_empty());
        }
        while spans.len() < max_records && buffer.len() < self.max_batch_bytes {
            // Whole lines already in the reader's buffer are taken in one
            // pass over it; a line it holds only part of, or one over the
            // limit, is read on its own below.
            if self
                .take_buffered_lines(buffer, spans, max_records)
                .map_err(|err| wrap(err, &self.name))?
            {
                continue;
            }
            let start = buffer.len();
            let (consumed, full_length) = read_line_capped(&mut self.reader, buffer, self.max_record_bytes)
                .map_err(|err| wrap(err, &self.name))?;
            if consumed == 0 {
                self.done = true;
                break;
            }
            self.line += 1;
            self.bytes_read += consumed as u64;
            let mut end = buffer.len();
            while end > start && matches!(buffer[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if buffer[start..end].iter().all(u8::is_ascii_whitespace) {
                buffer.truncate(start);
                continue;
            }
            let oversized = (full_length > self.max_record_bytes).then_some(full_length);
            spans.push(RecordSpan {
                range: start..end,
                line: self.line,
                oversized,
            });
        }
        Ok(!spans.is_empty())
    }

    /// Appends the whole lines the reader has buffered to `buffer` with one
    /// copy, their spans to `spans`, within the batch's record and byte
    /// budgets. Returns whether it took any line (a blank one included);
    /// false when the buffered bytes hold no whole line within the record
    /// limit.
    fn take_buffered_lines(
        &mut self,
        buffer: &mut Vec<u8>,
        spans: &mut Vec<RecordSpan>,
        max_records: usize,
    ) -> std::io::Result<bool> {
        let available = self.reader.fill_buf()?;
        // `available[copied..]` is not yet in `buffer`; `at` is where the
        // next line starts.
        let (mut copied, mut at) = (0, 0);
        while spans.len() < max_records && buffer.len() + (at - copied) < self.max_batch_bytes {
            let Some(length) = memchr::memchr(b'\n', &available[at..]) else {
                break;
            };
            if length > self.max_record_bytes {
                break;
            }
            self.line += 1;
            self.bytes_read += length as u64 + 1;
            let mut end = at + length;
            while end > at && available[end - 1] == b'\r' {
                end -= 1;
            }
            let line = &available[at..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                buffer.extend_from_slice(&available[copied..at]);
                copied = at + length + 1;
            } else {
                let start = buffer.len() + (at - copied);
                spans.push(RecordSpan {
                    range: start..start + line.len(),
                    line: self.line,
                    oversized: None,
                });
            }
            at += length + 1;
        }
        buffer.extend_from_slice(&available[copied..at]);
        self.reader.consume(at);
        Ok(at > 0)
    }
}

/// Appends one line to `buffer`, keeping at most `limit` bytes of it (plus
/// the newline) but consuming all of it. Returns bytes consumed and the
/// line's full length without its newline.
fn read_line_capped(reader: &mut dyn BufRead, buffer: &mut Vec<u8>, limit: usize) -> std::io::Result<(usize, usize)> {
    let mut consumed = 0;
    let mut length = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((consumed, length));
        }
        let (chunk, found_newline) = match memchr::memchr(b'\n', available) {
            Some(position) => (&available[..position], true),
            None => (available, false),
        };
        let room = limit.saturating_sub(length);
        buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        length += chunk.len();
        let used = chunk.len() + usize::from(found_newline);
        consumed += used;
        reader.consume(used);
        if found_newline {
            return Ok((consumed, length));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keywatch-source-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn batches_close_at_their_byte_budget() {
        let line = format!("{}\n", "x".repeat(99));
        let path = temp_file("lines.jsonl", line.repeat(10).as_bytes());
        let mut reader = RecordReader::open(&path, 1000)
            .expect("opens")
            .with_byte_budgets(250, 1 << 20);
        let (mut buffer, mut spans) = (Vec::new(), Vec::new());
        let mut sizes = Vec::new();
        while reader.next_batch(&mut buffer, &mut spans, 100).expect("reads") {
            sizes.push(spans.len());
            assert!(buffer.len() < 250 + 100, "{} bytes", buffer.len());
        }
        assert_eq!(sizes, [3, 3, 3, 1], "99-byte records, 250-byte budget");
        std::fs::remove_dir_all(path.parent().expect("a folder")).expect("clean up");
    }

    #[test]
    fn whole_documents_are_read_up_to_their_budget_only() {
        let document = format!(r#"{{"Records":[{}]}}"#, "{},".repeat(1000) + "{}");
        let path = temp_file("trail.json", document.as_bytes());
        let mut reader = RecordReader::open(&path, 1000)
            .expect("opens")
            .with_byte_budgets(1 << 20, 100);
        let (mut buffer, mut spans) = (Vec::new(), Vec::new());
        assert!(reader.next_batch(&mut buffer, &mut spans, 100).expect("reads"));
        assert_eq!(buffer.len(), 101, "one byte past the budget, no more");
        assert!(!reader.next_batch(&mut buffer, &mut spans, 100).expect("reads"));
        let decoder =
            crate::decode::Decoder::new(crate::decode::Format::Auto, None, 1000).with_byte_budgets(100, 1 << 20);
        let mut again = RecordReader::open(&path, 1000)
            .expect("opens")
            .with_byte_budgets(1 << 20, 100);
        let mut read_again = Vec::new();
        again.next_batch(&mut read_again, &mut spans, 1).expect("reads");
        let decoded = decoder.decode_to_vec(&read_again);
        assert!(
            matches!(
                decoded.as_slice(),
                [Err(crate::decode::DecodeError::DocumentTooLarge {
                    size: 101,
                    limit: 100
                })]
            ),
            "{decoded:?}"
        );
        std::fs::remove_dir_all(path.parent().expect("a folder")).expect("clean up");
    }

    /// Whether a line is taken from the reader's buffer or read on its
    /// own (it crosses the end of the buffer, or is over the limit), it
    /// is the same record: the same bytes, line number and size.
    #[test]
    fn every_line_is_one_record_wherever_the_reads_cut_the_file() {
        let limit = 300;
        let mut seed: u64 = 7;
        let mut next = move |bound: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % bound
        };
        let mut file = Vec::new();
        while file.len() < 300_000 {
            let line: Vec<u8> = match next(20) {
                0 => b"  \t".to_vec(),
                1 => Vec::new(),
                2 => vec![b'o'; 300 + next(900) as usize],
                _ => (0..next(280)).map(|i| b'a' + (i % 26) as u8).collect(),
            };
            file.extend_from_slice(&line);
            file.extend_from_slice(if next(4) == 0 { b"\r\n" } else { b"\n" });
        }
        file.extend_from_slice(b"last line, no newline");
        let mut expected = Vec::new();
        for (index, line) in file.split(|&byte| byte == b'\n').enumerate() {
            let mut kept = &line[..line.len().min(limit)];
            while let [rest @ .., b'\r'] = kept {
                kept = rest;
            }
            if !kept.iter().all(u8::is_ascii_whitespace) {
                expected.push((
                    kept.to_vec(),
                    index as u64 + 1,
                    (line.len() > limit).then_some(line.len()),
                ));
            }
        }
        let path = temp_file("cuts.jsonl", &file);
        for (records, bytes) in [(7, 1 << 20), (4096, 2_000), (4096, 1 << 22)] {
            let mut reader = RecordReader::open(&path, limit)
                .expect("opens")
                .with_byte_budgets(bytes, 1 << 20);
            let (mut buffer, mut spans) = (Vec::new(), Vec::new());
            let mut read = Vec::new();
            while reader.next_batch(&mut buffer, &mut spans, records).expect("reads") {
                assert!(spans.len() <= records);
                for span in &spans {
                    read.push((buffer[span.range.clone()].to_vec(), span.line, span.oversized));
                }
            }
            assert_eq!(
                read.len(),
                expected.len(),
                "batches of {records} records, {bytes} bytes"
            );
            assert!(read == expected, "batches of {records} records, {bytes} bytes");
            assert_eq!(reader.bytes_read, file.len() as u64);
        }
        std::fs::remove_dir_all(path.parent().expect("a folder")).expect("clean up");
    }

    #[test]
    fn lines_are_capped_but_consumed() {
        let input = b"short\nthis line is far too long\nend";
        let mut reader: &[u8] = input;
        let mut buffer = Vec::new();
        assert_eq!(read_line_capped(&mut reader, &mut buffer, 8).unwrap(), (6, 5));
        assert_eq!(read_line_capped(&mut reader, &mut buffer, 8).unwrap(), (26, 25));
        assert_eq!(buffer, b"shortthis lin");
        assert_eq!(read_line_capped(&mut reader, &mut buffer, 8).unwrap(), (3, 3));
        assert_eq!(read_line_capped(&mut reader, &mut buffer, 8).unwrap(), (0, 0));
    }
}
