//! Replay of Parquet files (`--format parquet`): each Arrow batch of rows
//! becomes events borrowed from its columns, handed to the engine in
//! micro-batches exactly as decoded JSON lines are. A row is a record: its
//! 1-based number in the file is the `line` of its rejections and of its
//! origin, so a Parquet file and the JSON lines file of the same events
//! give the same outputs. Several files are merged by event time as JSON
//! inputs are.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use std::collections::VecDeque;

use super::{Lane, Placed, ReplayError, ReplaySummary, Run, origin_of};
use crate::counts::Counts;
use crate::decode::parquet::BatchView;
use crate::decode::{DecodeError, Decoder};
use crate::engine::{Engine, Texts};
use crate::event::AccessEvent;
use crate::replay::packed::PackedEvents;
use crate::sink::Rejected;
use crate::sink::file::OutputFiles;
use crate::source::SourceRef;
use crate::source::parquet::ParquetInput;

impl Run<'_> {
    /// Replays Parquet `inputs`, found through the decoder's mapping
    /// (canonical column names without one).
    pub(super) fn parquet(
        &mut self,
        inputs: &[PathBuf],
        decoder: &Decoder,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        let mapping = decoder.mapping().clone();
        let mut opened = Vec::with_capacity(inputs.len());
        for path in inputs {
            let input = ParquetInput::open(path, &mapping)?;
            self.names.push(input.name().to_string());
            opened.push(input);
        }
        if opened.len() == 1 {
            let input = opened.pop().expect("one input");
            self.one_parquet(input, engine, outputs, &mut summary.counts)
        } else {
            self.merged_parquet(opened, engine, outputs, &mut summary.counts)
        }
    }

    /// One file, streamed: events borrow from the batch's columns.
    fn one_parquet(
        &mut self,
        mut input: ParquetInput,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        counts: &mut Counts,
    ) -> Result<(), ReplayError> {
        let name = input.name().to_string();
        if let Some(bar) = self.progress {
            bar.set_message(name.clone());
        }
        let mut rows_before = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(batch) = input.next_batch()? else { break };
            let view = input
                .plan()
                .view(&batch)
                .map_err(|source| column_error(&name, source))?;
            // Events borrow from this batch's arrays: one vector per batch
            // of rows, nothing per event.
            let mut batch_events = Vec::with_capacity(view.rows());
            self.origins.clear();
            self.rejects.clear();
            let origins = &mut self.origins;
            let rejects = &mut self.rejects;
            decode_rows(
                &view,
                &name,
                rows_before,
                counts,
                |after, rejected| rejects.push(Placed { after, rejected }),
                |event, line| {
                    batch_events.push(event);
                    origins.push(origin_of(0, line));
                },
            );
            rows_before += view.rows() as u64;
            let origins = std::mem::take(&mut self.origins);
            let rejects = std::mem::take(&mut self.rejects);
            self.feed(engine, &batch_events, &origins, &rejects, counts, outputs)?;
            self.origins = origins;
            self.rejects = rejects;
            if let Some(bar) = self.progress {
                bar.set_position(input.bytes_estimate());
            }
        }
        Ok(())
    }

    /// Several files merged by event time ([`Run::merge`]).
    fn merged_parquet(
        &mut self,
        inputs: Vec<ParquetInput>,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        counts: &mut Counts,
    ) -> Result<(), ReplayError> {
        let mut lanes: Vec<ParquetLane> = inputs
            .into_iter()
            .map(|input| ParquetLane { input, rows_before: 0 })
            .collect();
        self.merge(&mut lanes, Texts::Raw, engine, outputs, counts)
    }
}

/// One file of a merged replay and the rows read from it so far.
struct ParquetLane {
    input: ParquetInput,
    rows_before: u64,
}

impl Lane for ParquetLane {
    fn refill(
        &mut self,
        index: usize,
        queue: &mut PackedEvents,
        rejects: &mut VecDeque<Placed>,
        counts: &mut Counts,
    ) -> Result<bool, ReplayError> {
        let Some(rows) = self.input.next_batch()? else {
            return Ok(false);
        };
        let name = self.input.name().to_string();
        let view = self
            .input
            .plan()
            .view(&rows)
            .map_err(|source| column_error(&name, source))?;
        let queued = queue.len();
        decode_rows(
            &view,
            &name,
            self.rows_before,
            counts,
            |after, rejected| {
                rejects.push_back(Placed {
                    after: queued + after,
                    rejected,
                })
            },
            |event, line| queue.push(&event, origin_of(index, line)),
        );
        self.rows_before += view.rows() as u64;
        Ok(true)
    }

    fn bytes_read(&self) -> u64 {
        self.input.bytes_estimate()
    }
}

fn column_error(name: &str, source: crate::decode::parquet::ColumnError) -> ReplayError {
    ReplayError::Parquet(crate::source::parquet::ParquetSourceError::Columns {
        path: name.to_string(),
        source,
    })
}

/// Decodes every row of `view`: events go to `on_event` with their 1-based
/// row number in the file, rows without a key are counted, other bad rows
/// go to `on_rejected` with their reason and row, and the number of events
/// of the batch before them.
fn decode_rows<'b>(
    view: &BatchView<'b>,
    name: &str,
    rows_before: u64,
    counts: &mut Counts,
    mut on_rejected: impl FnMut(usize, Rejected),
    mut on_event: impl FnMut(AccessEvent<'b>, u64),
) {
    counts.records += view.rows() as u64;
    let mut events = 0;
    for row in 0..view.rows() {
        let line = rows_before + row as u64 + 1;
        match view.event(row) {
            Ok(event) => {
                events += 1;
                on_event(event, line);
            }
            Err(DecodeError::NoKey) => counts.no_key += 1,
            Err(error) => {
                counts.count_rejected(&error);
                let source = SourceRef::File {
                    file: name.to_string(),
                    line,
                    index: None,
                };
                let excerpt = view.row_excerpt(row);
                on_rejected(
                    events,
                    Rejected::new(&error, source, excerpt.as_bytes(), &view.key_field_names()),
                );
            }
        }
    }
}
