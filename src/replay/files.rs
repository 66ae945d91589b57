//! Replay of log files, plain or gzip: records are read in batches,
//! decoded, and handed to the engine in micro-batches. Several inputs are
//! read together and merged by event time (always the input whose next
//! event is oldest), so inputs that overlap in time make one stream for one
//! watermark. A stop flag (SIGINT) ends the reading cleanly: what is held is
//! judged and every output is flushed.

mod parquet;

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use super::packed::{PackedEvents, relend};
use super::{ReplayError, ReplaySummary};
use crate::alert::Output;
use crate::alert::owner::attach_owners;
use crate::counts::Counts;
use crate::decode::{DecodeError, Decoded, Decoder};
use crate::engine::{Engine, Quarantined, Texts};
use crate::event::AccessEvent;
use crate::owners::OwnerBook;
use crate::sink::Rejected;
use crate::sink::file::OutputFiles;
use crate::source::SourceRef;
use crate::source::file::{RecordReader, RecordSpan};

/// The most events of an input looked at past one dated far ahead, in a
/// merged replay, for one back near the merged time (which makes it a
/// stray: see [`Run::merge`]); below it, `time.confirm_after - 1` is.
const MAX_STRAY_LOOKAHEAD: usize = 4096;

/// Bits of an origin that hold the line; the input's index is above them.
const LINE_BITS: u32 = 48;

/// What the engine is told of an event's origin: input index and line.
pub(super) fn origin_of(input: usize, line: u64) -> u64 {
    ((input as u64) << LINE_BITS) | (line & ((1 << LINE_BITS) - 1))
}

/// A rejected record and how many events of its batch come before it.
///
/// The rejected output follows the events: a rejection is written right
/// after the event before it in its own input has been judged (rejections
/// before an input's first event come first), and an event quarantined as
/// too far ahead is written when the event that let it go has been judged.
/// So `rejected.jsonl` is in one order whatever the batch size, the number
/// of threads, or how the reading was cut into batches.
#[derive(Debug, Clone)]
pub(super) struct Placed {
    pub(super) after: usize,
    pub(super) rejected: Rejected,
}

/// Replays files through an engine into output files. Events are handed to
/// the engine in micro-batches of `batch_size` records; the outputs do not
/// depend on it. Reading stops early when `stop` is set; the summary then
/// says the replay was interrupted. Alerts and revocation requests carry
/// their key's owner from `owners`.
#[allow(clippy::too_many_arguments)]
pub fn replay_files(
    inputs: &[PathBuf],
    decoder: &Decoder,
    engine: &mut Engine,
    batch_size: usize,
    outputs: &mut OutputFiles,
    progress: Option<&ProgressBar>,
    stop: &AtomicBool,
    owners: &OwnerBook,
) -> Result<ReplaySummary, ReplayError> {
    let mut summary = ReplaySummary::default();
    let mut run = Run::new(owners, batch_size, progress, stop);
    if decoder.format == crate::decode::Format::Parquet {
        run.parquet(inputs, decoder, engine, outputs, &mut summary)?;
    } else if inputs.len() == 1 {
        run.one_input(&inputs[0], decoder, engine, outputs, &mut summary)?;
    } else {
        run.merged(inputs, decoder, engine, outputs, &mut summary)?;
    }
    run.finish(engine, outputs, &mut summary)?;
    Ok(summary)
}

/// Scratch shared by the ways of reading (here and in [`super::parallel`]).
pub(super) struct Run<'a> {
    pub(super) owners: &'a OwnerBook,
    /// Input names by index, for quarantined events' sources.
    pub(super) names: Vec<String>,
    pub(super) emitted: Vec<Output>,
    pub(super) quarantined: Vec<Quarantined>,
    pub(super) origins: Vec<u64>,
    /// The rejections of the batch being fed.
    pub(super) rejects: Vec<Placed>,
    /// The input is over: every revocation candidate is judged.
    pub(super) finished: bool,
    /// Events per micro-batch handed to the engine (at least 1).
    pub(super) batch_size: usize,
    pub(super) progress: Option<&'a ProgressBar>,
    /// Reading stops when this is set.
    pub(super) stop: &'a AtomicBool,
}

impl<'a> Run<'a> {
    /// Empty scratch for a replay putting the owners of `owners` on
    /// outputs, feeding the engine `batch_size` events at a time.
    pub(super) fn new(
        owners: &'a OwnerBook,
        batch_size: usize,
        progress: Option<&'a ProgressBar>,
        stop: &'a AtomicBool,
    ) -> Run<'a> {
        Run {
            owners,
            names: Vec::new(),
            emitted: Vec::new(),
            quarantined: Vec::new(),
            origins: Vec::new(),
            rejects: Vec::new(),
            finished: false,
            batch_size: batch_size.max(1),
            progress,
            stop,
        }
    }

    /// How far the revocation gate may judge candidates (see
    /// [`Engine::candidate_watermark`]).
    fn candidate_watermark(&self, engine: &Engine) -> i64 {
        if self.finished {
            i64::MAX
        } else {
            engine.candidate_watermark()
        }
    }

    /// The input is over: held events are judged, the view across keys
    /// judges the observations it held back to order them, every key's
    /// digest of its last day goes out, and the summary takes the engine's
    /// figures.
    pub(super) fn finish(
        &mut self,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        summary.interrupted = self.stop.load(Ordering::Relaxed);
        self.emitted.clear();
        engine.finish(&mut self.emitted);
        self.finished = true;
        self.write(engine, &mut summary.counts, outputs)?;
        outputs.sync()?;
        let stats = engine.stats();
        summary.keys = engine.keys_tracked() as u64;
        summary.suppressed = stats.suppressed;
        summary.late_events = stats.late_events;
        Ok(())
    }

    /// Writes what the engine emitted and quarantined.
    pub(super) fn write(
        &mut self,
        engine: &mut Engine,
        counts: &mut Counts,
        outputs: &mut OutputFiles,
    ) -> Result<(), ReplayError> {
        attach_owners(self.owners, &mut self.emitted);
        let watermark = self.candidate_watermark(engine);
        counts.revocations_shadow += outputs.gate_outputs(&mut self.emitted, watermark)?;
        for output in &self.emitted {
            counts.count_output(output);
            outputs.write_output(output)?;
        }
        self.emitted.clear();
        if let Some(feedback) = &mut outputs.feedback {
            let mut audit = Vec::new();
            engine.take_feedback_audit(&mut audit);
            for record in &audit {
                feedback.write(record)?;
            }
        }
        engine.take_quarantined(&mut self.quarantined);
        for event in self.quarantined.drain(..) {
            counts.rejected += 1;
            *counts.rejected_by_reason.entry("future_event".to_string()).or_default() += 1;
            let input = (event.origin >> LINE_BITS) as usize;
            let source = SourceRef::File {
                file: self.names.get(input).cloned().unwrap_or_default(),
                line: event.origin & ((1 << LINE_BITS) - 1),
                index: None,
            };
            outputs.write_rejected(&Rejected::future_event(&event, source))?;
        }
        Ok(())
    }

    /// One input, streamed: events borrow from the batch's buffer.
    fn one_input(
        &mut self,
        input: &Path,
        decoder: &Decoder,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        let counts = &mut summary.counts;
        let mut buffer = Vec::new();
        let mut spans = Vec::new();
        let mut reader = RecordReader::open(input, decoder.max_record_bytes)?
            .with_byte_budgets(decoder.max_batch_bytes, decoder.max_document_bytes);
        let name = reader.name().to_string();
        self.names.push(name.clone());
        if let Some(bar) = self.progress {
            bar.set_message(name.clone());
        }
        // The event vector outlives every batch: emptied, it is lent to the
        // next batch's buffer, so it is sized once.
        let mut kept_events: Vec<AccessEvent<'static>> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) && reader.next_batch(&mut buffer, &mut spans, self.batch_size)? {
            // Events borrow from this batch's buffer: no allocation per
            // event.
            let mut events = relend(kept_events);
            let mut scratch = Vec::new();
            self.origins.clear();
            self.rejects.clear();
            let decoded = Cell::new(0);
            for span in &spans {
                decode_span(
                    decoder,
                    &buffer,
                    span,
                    &name,
                    &mut scratch,
                    counts,
                    |rejected| {
                        self.rejects.push(Placed {
                            after: decoded.get(),
                            rejected,
                        })
                    },
                    |event| {
                        events.push(event);
                        self.origins.push(origin_of(0, span.line));
                        decoded.set(decoded.get() + 1);
                    },
                );
            }
            // A whole CloudTrail document is one record of many events:
            // hand them to the engine in batches too.
            let origins = std::mem::take(&mut self.origins);
            let rejects = std::mem::take(&mut self.rejects);
            self.feed(engine, &events, &origins, &rejects, counts, outputs)?;
            self.origins = origins;
            self.rejects = rejects;
            kept_events = relend(events);
            if let Some(bar) = self.progress {
                bar.set_position(reader.bytes_read);
            }
        }
        Ok(())
    }

    /// Several inputs read together, merged by event time ([`Run::merge`]).
    fn merged(
        &mut self,
        inputs: &[PathBuf],
        decoder: &Decoder,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        let mut lanes = Vec::with_capacity(inputs.len());
        for input in inputs {
            let reader = RecordReader::open(input, decoder.max_record_bytes)?
                .with_byte_budgets(decoder.max_batch_bytes, decoder.max_document_bytes);
            self.names.push(reader.name().to_string());
            lanes.push(JsonLane {
                name: reader.name().to_string(),
                reader,
                decoder,
                batch_size: self.batch_size,
                buffer: Vec::new(),
                spans: Vec::new(),
            });
        }
        self.merge(&mut lanes, Texts::Raw, engine, outputs, &mut summary.counts)
    }

    /// Hands `events` to the engine in micro-batches of `batch_size` and
    /// writes what comes out of each, with each of `rejects` right after
    /// the events before it ([`Placed`]).
    pub(super) fn feed(
        &mut self,
        engine: &mut Engine,
        events: &[AccessEvent<'_>],
        origins: &[u64],
        rejects: &[Placed],
        counts: &mut Counts,
        outputs: &mut OutputFiles,
    ) -> Result<(), ReplayError> {
        self.feed_texts(engine, events, origins, rejects, Texts::Raw, counts, outputs)
    }

    /// [`Run::feed`], for events whose texts are as `texts` says
    /// ([`Engine::process_texts`]). What is written does not depend on how
    /// the events were cut into batches.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn feed_texts(
        &mut self,
        engine: &mut Engine,
        events: &[AccessEvent<'_>],
        origins: &[u64],
        rejects: &[Placed],
        texts: Texts,
        counts: &mut Counts,
        outputs: &mut OutputFiles,
    ) -> Result<(), ReplayError> {
        let mut rejects = rejects.iter().peekable();
        let mut start = 0;
        loop {
            while let Some(placed) = rejects.next_if(|placed| placed.after <= start) {
                outputs.write_rejected(&placed.rejected)?;
            }
            if start >= events.len() {
                break;
            }
            // A micro-batch ends early where a rejection is due, after an
            // event that makes a revocation candidate, and after each event
            // while the gate holds one: the gate judges a candidate once the
            // engine has judged an event past its time, so it is asked after
            // every event until then, and its outputs (a held request's
            // alert) fall at the same event whatever the batch size.
            let mut end = (start + self.batch_size).min(events.len());
            if let Some(placed) = rejects.peek() {
                end = end.min(placed.after);
            }
            if outputs.gate_pending() > 0 {
                end = start + 1;
            }
            self.emitted.clear();
            let chunk_origins = origins.get(start..end).unwrap_or(&[]);
            let taken = engine.process_until_candidate(&events[start..end], chunk_origins, texts, &mut self.emitted);
            counts.events += taken as u64;
            self.write(engine, counts, outputs)?;
            start += taken;
        }
        for placed in rejects {
            outputs.write_rejected(&placed.rejected)?;
        }
        Ok(())
    }

    /// Several inputs merged by event time: each event fed comes from the
    /// input whose next event is oldest (the first input on ties), so the
    /// merged order does not depend on the batch size. Events are detached
    /// from their buffers to wait in each input's queue, and copied from
    /// there into the micro-batch ([`PackedEvents`]: no allocation per
    /// event). An input's rejections wait with its events and join the
    /// micro-batch right after the event before them ([`Placed`]); a lane
    /// is refilled as soon as its last queued event is taken, so
    /// rejections at the head of a refill follow that event.
    ///
    /// An event dated far ahead of the merged time (more than
    /// `time.max_ahead` past the newest event taken) whose input goes on
    /// near that time within its next `time.confirm_after - 1` events is a
    /// stray, not the input moving on: it goes to the engine at once, as it
    /// would in one file, where it is held apart and quarantined unless
    /// confirmed. Left in time order, it would hold back every later event
    /// of its input until the others were read, and those would all be
    /// judged late. An input whose next `time.confirm_after` events are all
    /// that far ahead has moved on (a gap in its logs, as the engine would
    /// take it in one file) and waits in time order. The oldest time among
    /// the events looked at is kept until the input's head moves, so an
    /// input waiting on a gap costs one comparison per event taken.
    pub(super) fn merge<L: Lane>(
        &mut self,
        lanes: &mut [L],
        texts: Texts,
        engine: &mut Engine,
        outputs: &mut OutputFiles,
        counts: &mut Counts,
    ) -> Result<(), ReplayError> {
        let mut queues: Vec<PackedEvents> = (0..lanes.len()).map(|_| PackedEvents::default()).collect();
        let mut waiting: Vec<VecDeque<Placed>> = (0..lanes.len()).map(|_| VecDeque::new()).collect();
        // The next event of each queue.
        let mut heads = vec![0; lanes.len()];
        let mut done = vec![false; lanes.len()];
        let mut batch = PackedEvents::default();
        let mut batch_rejects: Vec<Placed> = Vec::new();
        let mut kept: Vec<AccessEvent<'static>> = Vec::with_capacity(self.batch_size);
        let mut origins: Vec<u64> = Vec::with_capacity(self.batch_size);
        let max_ahead_ms = engine.max_ahead_ms();
        let lookahead = (engine.confirm_after() as usize)
            .saturating_sub(1)
            .clamp(1, MAX_STRAY_LOOKAHEAD);
        // Per input, while its head stays: the queue index looked up to
        // past the head and the oldest time seen there.
        let mut looked: Vec<Option<(usize, i64)>> = vec![None; lanes.len()];
        // The newest event time taken, strays aside.
        let mut clock_ms: Option<i64> = None;
        loop {
            let mut oldest: Option<(i64, usize)> = None;
            let mut stray: Option<usize> = None;
            for (index, lane) in lanes.iter_mut().enumerate() {
                let mut lane = LaneState {
                    lane,
                    index,
                    queue: &mut queues[index],
                    waiting: &mut waiting[index],
                    head: &mut heads[index],
                    done: &mut done[index],
                };
                if !lane.fill(1, self.stop, counts, &mut batch_rejects, batch.len())? {
                    continue;
                }
                let ts_ms = lane.queue.ts_ms(*lane.head);
                let far = clock_ms.map(|clock| clock.saturating_add(max_ahead_ms));
                if stray.is_none()
                    && let Some(far) = far
                    && ts_ms > far
                {
                    lane.fill(1 + lookahead, self.stop, counts, &mut batch_rejects, batch.len())?;
                    let end = lane.queue.len().min(*lane.head + 1 + lookahead);
                    let (from, mut oldest_next) = looked[index].unwrap_or((*lane.head + 1, i64::MAX));
                    for next in from..end {
                        oldest_next = oldest_next.min(lane.queue.ts_ms(next));
                    }
                    looked[index] = Some((end.max(from), oldest_next));
                    if oldest_next <= far {
                        stray = Some(index);
                    }
                }
                if oldest.is_none_or(|(oldest_ms, _)| ts_ms < oldest_ms) {
                    oldest = Some((ts_ms, index));
                }
            }
            let picked = stray.or(oldest.map(|(_, index)| index));
            let exhausted = picked.is_none();
            if let Some(index) = picked {
                let head = heads[index];
                heads[index] += 1;
                looked[index] = None;
                if stray.is_none() {
                    let ts_ms = queues[index].ts_ms(head);
                    clock_ms = Some(clock_ms.map_or(ts_ms, |clock| clock.max(ts_ms)));
                }
                batch.push(&queues[index].event(head), queues[index].tag(head));
                place_due(&mut waiting[index], head + 1, &mut batch_rejects, batch.len());
            }
            if batch.len() >= self.batch_size || (exhausted && !(batch.is_empty() && batch_rejects.is_empty())) {
                let mut events = relend(kept);
                events.extend((0..batch.len()).map(|index| batch.event(index)));
                origins.clear();
                origins.extend((0..batch.len()).map(|index| batch.tag(index)));
                self.feed_texts(engine, &events, &origins, &batch_rejects, texts, counts, outputs)?;
                kept = relend(events);
                batch.clear();
                batch_rejects.clear();
                if let Some(bar) = self.progress {
                    bar.set_position(lanes.iter().map(Lane::bytes_read).sum());
                }
            }
            if exhausted {
                return Ok(());
            }
        }
    }
}

/// One input of a merge and its queue, while the merge looks at it.
struct LaneState<'m, L> {
    lane: &'m mut L,
    index: usize,
    queue: &'m mut PackedEvents,
    waiting: &'m mut VecDeque<Placed>,
    /// The queue's next event.
    head: &'m mut usize,
    done: &'m mut bool,
}

impl<L: Lane> LaneState<'_, L> {
    /// Reads until `wanted` events wait in the queue from its head, or the
    /// input is over; whether they do. An empty queue starts afresh; one
    /// still holding events (a look past the head) is added to. Rejections
    /// read before the queue's next event follow the event taken last.
    fn fill(
        &mut self,
        wanted: usize,
        stop: &AtomicBool,
        counts: &mut Counts,
        batch_rejects: &mut Vec<Placed>,
        batch_len: usize,
    ) -> Result<bool, ReplayError> {
        while self.queue.len() - *self.head < wanted && !*self.done && !stop.load(Ordering::Relaxed) {
            if *self.head == self.queue.len() {
                self.queue.clear();
                *self.head = 0;
                self.waiting.clear();
            }
            if !self.lane.refill(self.index, self.queue, self.waiting, counts)? {
                *self.done = true;
            }
            place_due(self.waiting, *self.head, batch_rejects, batch_len);
        }
        Ok(self.queue.len() - *self.head >= wanted)
    }
}

/// Moves the rejections of a lane that follow its first `taken` queued
/// events into the micro-batch, after its first `batch_len` events.
fn place_due(waiting: &mut VecDeque<Placed>, taken: usize, batch_rejects: &mut Vec<Placed>, batch_len: usize) {
    while let Some(placed) = waiting.pop_front_if(|placed| placed.after <= taken) {
        batch_rejects.push(Placed {
            after: batch_len,
            rejected: placed.rejected,
        });
    }
}

/// One input of a merged replay ([`Run::merge`]), however it is read.
pub(super) trait Lane {
    /// Reads and decodes the input's next batch: its events, detached from
    /// their buffer, go to the back of `queue` tagged with their origins
    /// (`index` is the input's), its rejections to `rejects`, each with the
    /// number of the queue's events before it. `false` when the input is
    /// over.
    fn refill(
        &mut self,
        index: usize,
        queue: &mut PackedEvents,
        rejects: &mut VecDeque<Placed>,
        counts: &mut Counts,
    ) -> Result<bool, ReplayError>;

    /// How far the input has been read, for the progress bar.
    fn bytes_read(&self) -> u64;
}

/// A file of JSON lines or documents in a merged replay.
struct JsonLane<'d> {
    reader: RecordReader,
    name: String,
    decoder: &'d Decoder,
    batch_size: usize,
    buffer: Vec<u8>,
    spans: Vec<RecordSpan>,
}

impl Lane for JsonLane<'_> {
    fn refill(
        &mut self,
        index: usize,
        queue: &mut PackedEvents,
        rejects: &mut VecDeque<Placed>,
        counts: &mut Counts,
    ) -> Result<bool, ReplayError> {
        if !self
            .reader
            .next_batch(&mut self.buffer, &mut self.spans, self.batch_size)?
        {
            return Ok(false);
        }
        let mut scratch = Vec::new();
        let queued = Cell::new(queue.len());
        for span in &self.spans {
            decode_span(
                self.decoder,
                &self.buffer,
                span,
                &self.name,
                &mut scratch,
                counts,
                |rejected| {
                    rejects.push_back(Placed {
                        after: queued.get(),
                        rejected,
                    })
                },
                |event| {
                    queue.push(&event, origin_of(index, span.line));
                    queued.set(queued.get() + 1);
                },
            );
        }
        Ok(true)
    }

    fn bytes_read(&self) -> u64 {
        self.reader.bytes_read
    }
}

/// Decodes one record: events go to `on_event`, rejections to
/// `on_rejected`, in the record's order.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_span<'a>(
    decoder: &Decoder,
    buffer: &'a [u8],
    span: &RecordSpan,
    name: &str,
    scratch: &mut Vec<Result<AccessEvent<'a>, DecodeError>>,
    counts: &mut Counts,
    mut on_rejected: impl FnMut(Rejected),
    mut on_event: impl FnMut(AccessEvent<'a>),
) {
    counts.records += 1;
    let record = &buffer[span.range.clone()];
    let mut reject = |counts: &mut Counts, error: &DecodeError, index: Option<u32>| {
        counts.count_rejected(error);
        let source = SourceRef::File {
            file: name.to_string(),
            line: span.line,
            index,
        };
        on_rejected(Rejected::new(error, source, record, &decoder.key_field_names()));
    };
    // The reader cut a line over the limit short: reject it without
    // decoding what is left of it.
    if let Some(size) = span.oversized {
        let error = DecodeError::Oversized {
            size,
            limit: decoder.max_record_bytes,
        };
        reject(counts, &error, None);
        return;
    }
    // Straight from the decoder's scratch (as [`Decoder::decode_record`]
    // gives them, without moving each event through an iterator chain).
    scratch.clear();
    decoder.decode(record, scratch);
    let several_events = scratch.len() > 1;
    for (index, result) in scratch.drain(..).enumerate() {
        match Decoded::of(result, index, several_events) {
            Decoded::Event(event) => on_event(event),
            Decoded::NoKey => counts.no_key += 1,
            Decoded::Rejected(rejection) => reject(counts, &rejection.error, rejection.index),
        }
    }
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
