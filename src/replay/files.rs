//! Replay of log files, plain or gzip, in the order given: records are read
//! in batches, decoded, and handed to the engine in micro-batches.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use super::{ReplayError, ReplaySummary};
use crate::decode::{DecodeError, Decoded, Decoder, Rejection};
use crate::engine::Engine;
use crate::sink::Rejected;
use crate::sink::file::OutputFiles;
use crate::source::SourceRef;
use crate::source::file::RecordReader;

/// Replays files through an engine into output files. Events are handed to
/// the engine in micro-batches of `batch_size` records; the outputs do not
/// depend on it.
pub fn replay_files(
    inputs: &[PathBuf],
    decoder: &Decoder,
    engine: &mut Engine,
    batch_size: usize,
    outputs: &mut OutputFiles,
    progress: Option<&ProgressBar>,
) -> Result<ReplaySummary, ReplayError> {
    let mut summary = ReplaySummary::default();
    let counts = &mut summary.counts;
    let mut buffer = Vec::new();
    let mut spans = Vec::new();
    let mut emitted = Vec::new();
    for input in inputs {
        let mut reader = RecordReader::open(input, decoder.max_record_bytes)?
            .with_byte_budgets(decoder.max_batch_bytes, decoder.max_document_bytes);
        let name = reader.name().to_string();
        if let Some(bar) = progress {
            bar.set_message(name.clone());
        }
        while reader.next_batch(&mut buffer, &mut spans, batch_size.max(1))? {
            // Events borrow from this batch's buffer: one allocation per
            // batch, none per event.
            let mut events = Vec::with_capacity(spans.len());
            let mut scratch = Vec::new();
            for span in &spans {
                counts.records += 1;
                let record = &buffer[span.range.clone()];
                // The reader cut a line over the limit short: reject it
                // without decoding what is left of it.
                let cut_short = span.oversized.map(|size| {
                    Decoded::Rejected(Rejection {
                        error: DecodeError::Oversized {
                            size,
                            limit: decoder.max_record_bytes,
                        },
                        index: None,
                    })
                });
                let decoded = match cut_short {
                    Some(_) => None,
                    None => Some(decoder.decode_record(record, &mut scratch)),
                };
                for item in cut_short.into_iter().chain(decoded.into_iter().flatten()) {
                    match item {
                        Decoded::Event(event) => events.push(event),
                        Decoded::NoKey => counts.no_key += 1,
                        Decoded::Rejected(rejection) => {
                            counts.count_rejected(&rejection.error);
                            let source = SourceRef::File {
                                file: name.clone(),
                                line: span.line,
                                index: rejection.index,
                            };
                            outputs.write_rejected(&Rejected::new(
                                &rejection.error,
                                source,
                                record,
                                &decoder.key_field_names(),
                            ))?;
                        }
                    }
                }
            }
            // A whole CloudTrail document is one record of many events:
            // hand them to the engine in batches too.
            for chunk in events.chunks(batch_size.max(1)) {
                emitted.clear();
                engine.process(chunk, &mut emitted);
                counts.events += chunk.len() as u64;
                for output in &emitted {
                    counts.count_output(output);
                    outputs.write_output(output)?;
                }
            }
            if let Some(bar) = progress {
                bar.set_position(reader.bytes_read);
            }
        }
    }
    // The input is over: the view across keys judges the observations it
    // held back to order them, and every key's digest of its last day goes
    // out.
    emitted.clear();
    engine.finish(&mut emitted);
    for output in &emitted {
        counts.count_output(output);
        outputs.write_output(output)?;
    }
    outputs.sync()?;
    let stats = engine.stats();
    summary.keys = engine.keys_tracked() as u64;
    summary.suppressed = stats.suppressed;
    summary.late_events = stats.late_events;
    Ok(summary)
}

/// A bar of bytes read over the inputs' sizes, on a terminal only.
pub fn progress_bar(inputs: &[PathBuf], hidden: bool) -> Option<ProgressBar> {
    if hidden || !std::io::stderr().is_terminal() {
        return None;
    }
    let total: u64 = inputs
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
