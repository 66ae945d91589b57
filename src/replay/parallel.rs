//! `keywatch replay --threads N`: file replay on several cores with outputs
//! byte for byte those of one thread.
//!
//! Reading, decoding and judging are split into stages on their own
//! threads. Per input, a reader thread cuts the file into record batches
//! (the same batches one thread reads), `N - 1` decoder threads decode them
//! by turns (with one decoder, one thread both reads and decodes), and the
//! calling thread takes the decoded batches back in the
//! order they were read and feeds them to the one engine exactly as
//! [`super::files`] does: same micro-batches, same origins, rejections
//! written at the same points. Every decision of the engine, and so every
//! output, is that of one thread by construction; only where the work is
//! done changes.
//!
//! Why one engine and not one per key shard: the engine's per-key decisions
//! also read state shared by every key, in the order one engine builds it
//! (the reorder buffer's watermark, which decides which events are late;
//! eviction at the first event of a day, sparing keys with held events;
//! the organisation table of each epoch, which judges new keys; the
//! interned endpoint and client ids that break ties in evidence; feedback
//! falling due on the engine's clock; the two keys that confirm a jump of
//! the clock). Engines that each see a share of the keys build each of
//! these differently, so their alerts would differ from one thread's. See
//! BENCHMARKS.md for what bounds the speedup.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

use super::files::{Lane, Placed, Run, decode_span, origin_of};
use super::packed::{PackedEvents, relend};
use super::{ReplayError, ReplaySummary};
use crate::counts::Counts;
use crate::decode::Decoder;
use crate::engine::{Engine, Texts};
use crate::enrich::client::client_family;
use crate::enrich::endpoint::normalize_endpoint;
use crate::event::AccessEvent;
use crate::owners::OwnerBook;
use crate::sink::file::OutputFiles;
use crate::source::file::{RecordReader, RecordSpan, SourceError};

/// Decoded batches each decoder may have ready ahead of the engine: enough
/// to hide the jitter of one batch, few enough to bound memory.
const BATCHES_AHEAD: usize = 2;

/// The number of threads `--threads` means when not given: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One batch of records as the reader read it, decoded: its events, its
/// rejections (ready to write) and its counts.
#[derive(Debug, Default)]
pub(crate) struct DecodedBatch {
    /// The events, each tagged with its record's line.
    events: PackedEvents,
    /// The rejections, each after the events before it ([`Placed`]).
    rejected: Vec<Placed>,
    /// Records, rejections and events without a key of the batch.
    counts: Counts,
    /// Bytes the input's reader had read when it cut this batch.
    bytes_read: u64,
}

impl DecodedBatch {
    /// Keeps an event. Its endpoint is kept as its template and its user
    /// agent as its client family, worked out here on the decoder's thread:
    /// the engine reads an event's endpoint only through
    /// [`normalize_endpoint`] and its user agent only through
    /// [`client_family`], and takes these as they are
    /// ([`Engine::process_texts`] with [`Texts::Resolved`]), so the engine's view is
    /// unchanged and the judging thread has less to do.
    fn push(&mut self, event: &AccessEvent<'_>, line: u64, scratch_path: &mut String) {
        let template = normalize_endpoint(&event.endpoint, scratch_path);
        let family = client_family(&event.user_agent);
        self.events.push_with_texts(event, template, family, line);
    }

    /// The `index`th event, borrowing its strings from the batch.
    fn event(&self, index: usize) -> AccessEvent<'_> {
        self.events.event(index)
    }

    /// The record line of the `index`th event.
    fn line(&self, index: usize) -> u64 {
        self.events.tag(index)
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    /// Empties the batch for another, keeping what it has allocated.
    fn reset(&mut self, bytes_read: u64) {
        self.events.clear();
        self.rejected.clear();
        self.counts = Counts::default();
        self.bytes_read = bytes_read;
    }
}

/// Decoded batches the judging thread is done with, for the decoders to
/// fill again: a batch's buffers are large enough that a fresh one per
/// batch is taken from (and faulted in from) the system each time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spent(Arc<Mutex<Vec<DecodedBatch>>>);

impl Spent {
    /// A batch to fill: a spent one if any, else a new one.
    fn take(&self, bytes_read: u64) -> DecodedBatch {
        let spent = self.0.lock().ok().and_then(|mut spent| spent.pop());
        let mut batch = spent.unwrap_or_default();
        batch.reset(bytes_read);
        batch
    }

    /// Keeps a judged batch for reuse, up to as many as can be in flight.
    fn give_back(&self, batch: DecodedBatch) {
        if let Ok(mut spent) = self.0.lock()
            && spent.len() < 2 * (BATCHES_AHEAD + 2)
        {
            spent.push(batch);
        }
    }
}

/// Decodes one batch the way one thread does ([`decode_span`]), keeping
/// rejections to write and events to judge.
fn decode_batch(
    decoder: &Decoder,
    name: &str,
    buffer: &[u8],
    spans: &[RecordSpan],
    mut batch: DecodedBatch,
    scratch_path: &mut String,
) -> DecodedBatch {
    let mut scratch = Vec::new();
    let mut counts = Counts::default();
    let mut rejected = std::mem::take(&mut batch.rejected);
    let decoded = std::cell::Cell::new(batch.len());
    for span in spans {
        decode_span(
            decoder,
            buffer,
            span,
            name,
            &mut scratch,
            &mut counts,
            |rejection| {
                rejected.push(Placed {
                    after: decoded.get(),
                    rejected: rejection,
                })
            },
            |event| {
                batch.push(&event, span.line, scratch_path);
                decoded.set(decoded.get() + 1);
            },
        );
    }
    batch.counts = counts;
    batch.rejected = rejected;
    batch
}

/// Raw batches from the reader to a decoder.
enum Raw {
    Batch {
        buffer: Vec<u8>,
        spans: Vec<RecordSpan>,
        bytes_read: u64,
    },
    Failed(SourceError),
}

/// The decoded batches of one input, in the order they were read: batch
/// `n` went to decoder `n % decoders`, so it comes back from there.
pub(crate) struct Ordered<T> {
    from_decoders: Vec<Receiver<T>>,
    next: usize,
    ended: bool,
    /// Where judged batches go back to the decoders.
    spent: Spent,
}

impl<T> Ordered<T> {
    fn new(from_decoders: Vec<Receiver<T>>) -> Ordered<T> {
        Ordered {
            from_decoders,
            next: 0,
            ended: false,
            spent: Spent::default(),
        }
    }

    /// Hands a judged batch back to the decoders for reuse.
    fn give_back(&self, batch: DecodedBatch) {
        self.spent.give_back(batch);
    }

    /// The next batch in reading order; `None` once the input is over (the
    /// decoder due next has closed: the reader sent it nothing more).
    pub(crate) fn next_batch(&mut self) -> Option<T> {
        if self.ended || self.from_decoders.is_empty() {
            return None;
        }
        let due = self.next % self.from_decoders.len();
        match self.from_decoders[due].recv() {
            Ok(batch) => {
                self.next += 1;
                Some(batch)
            }
            Err(_) => {
                self.ended = true;
                None
            }
        }
    }
}

/// Starts the reader and decoders of one input inside `scope`; returns the
/// input's name and its decoded batches in reading order. The threads end
/// when the input ends, `stop` is set, or the returned stream is dropped.
fn spawn_input<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut reader: RecordReader,
    decoder: &'scope Decoder,
    batch_size: usize,
    decoders: usize,
    stop: &'scope AtomicBool,
) -> (String, Ordered<Result<DecodedBatch, SourceError>>) {
    let name = reader.name().to_string();
    let decoders = decoders.max(1);
    if decoders == 1 {
        return (
            name.clone(),
            read_and_decode(scope, reader, name, decoder, batch_size, stop),
        );
    }
    let mut to_decoders: Vec<SyncSender<Raw>> = Vec::with_capacity(decoders);
    let mut from_decoders = Vec::with_capacity(decoders);
    // Record buffers and their spans go back to the reader once decoded, so
    // a long replay does not allocate (and fault in) fresh ones per batch.
    let (recycle_tx, recycle_rx) = sync_channel::<(Vec<u8>, Vec<RecordSpan>)>(decoders * (BATCHES_AHEAD + 2));
    let spent = Spent::default();
    for _ in 0..decoders {
        let (raw_tx, raw_rx) = sync_channel::<Raw>(BATCHES_AHEAD);
        let (decoded_tx, decoded_rx) = sync_channel(BATCHES_AHEAD);
        to_decoders.push(raw_tx);
        from_decoders.push(decoded_rx);
        let name = name.clone();
        let recycle = recycle_tx.clone();
        let spent = spent.clone();
        scope.spawn(move || {
            let mut scratch_path = String::new();
            for raw in raw_rx {
                let decoded = match raw {
                    Raw::Batch {
                        buffer,
                        spans,
                        bytes_read,
                    } => {
                        let batch = spent.take(bytes_read);
                        let batch = decode_batch(decoder, &name, &buffer, &spans, batch, &mut scratch_path);
                        let _ = recycle.try_send((buffer, spans));
                        Ok(batch)
                    }
                    Raw::Failed(error) => Err(error),
                };
                if decoded_tx.send(decoded).is_err() {
                    return;
                }
            }
        });
    }
    drop(recycle_tx);
    scope.spawn(move || {
        for turn in 0.. {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let (mut buffer, mut spans) = recycle_rx.try_recv().unwrap_or_default();
            let raw = match reader.next_batch(&mut buffer, &mut spans, batch_size) {
                Ok(false) => return,
                Ok(true) => Raw::Batch {
                    buffer,
                    spans,
                    bytes_read: reader.bytes_read,
                },
                Err(error) => Raw::Failed(error),
            };
            let failed = matches!(raw, Raw::Failed(_));
            if to_decoders[turn % decoders].send(raw).is_err() || failed {
                return;
            }
        }
    });
    let mut ordered = Ordered::new(from_decoders);
    ordered.spent = spent;
    (name, ordered)
}

/// One thread that both reads and decodes an input, for an input with one
/// decoder: with the judging thread, as many busy threads as two cores,
/// instead of a reader and a decoder taking turns on one core.
fn read_and_decode<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut reader: RecordReader,
    name: String,
    decoder: &'scope Decoder,
    batch_size: usize,
    stop: &'scope AtomicBool,
) -> Ordered<Result<DecodedBatch, SourceError>> {
    let (decoded_tx, decoded_rx) = sync_channel(BATCHES_AHEAD);
    let spent = Spent::default();
    let for_thread = spent.clone();
    scope.spawn(move || {
        let (mut buffer, mut spans, mut scratch_path) = (Vec::new(), Vec::new(), String::new());
        while !stop.load(Ordering::Relaxed) {
            let decoded = match reader.next_batch(&mut buffer, &mut spans, batch_size) {
                Ok(false) => return,
                Ok(true) => {
                    let batch = for_thread.take(reader.bytes_read);
                    Ok(decode_batch(decoder, &name, &buffer, &spans, batch, &mut scratch_path))
                }
                Err(error) => Err(error),
            };
            let failed = decoded.is_err();
            if decoded_tx.send(decoded).is_err() || failed {
                return;
            }
        }
    });
    let mut ordered = Ordered::new(vec![decoded_rx]);
    ordered.spent = spent;
    ordered
}

/// [`super::files::replay_files`] on `threads` threads: the same outputs
/// and summary, byte for byte.
#[allow(clippy::too_many_arguments)]
pub fn replay_files_parallel(
    inputs: &[PathBuf],
    decoder: &Decoder,
    engine: &mut Engine,
    batch_size: usize,
    threads: usize,
    outputs: &mut OutputFiles,
    progress: Option<&ProgressBar>,
    stop: &AtomicBool,
    owners: &OwnerBook,
) -> Result<ReplaySummary, ReplayError> {
    let mut summary = ReplaySummary::default();
    let mut run = Run::new(owners, batch_size, progress, stop);
    let batch_size = run.batch_size;
    // The calling thread judges; the others decode.
    let decoders = threads.saturating_sub(1).max(1);
    let mut readers = Vec::with_capacity(inputs.len());
    for input in inputs {
        readers.push(
            RecordReader::open(input, decoder.max_record_bytes)?
                .with_byte_budgets(decoder.max_batch_bytes, decoder.max_document_bytes),
        );
    }
    std::thread::scope(|scope| {
        let mut streams = Vec::with_capacity(readers.len());
        // Several inputs share the decoders' threads between them.
        let per_input = decoders.div_ceil(readers.len()).max(1);
        for reader in readers {
            let (name, stream) = spawn_input(scope, reader, decoder, batch_size, per_input, stop);
            run.names.push(name);
            streams.push(stream);
        }
        // The streams are dropped when this returns, so the threads of an
        // input left unread (an error) end instead of waiting to send.
        if streams.len() == 1 {
            one_input(&mut run, &mut streams[0], engine, outputs, &mut summary)
        } else {
            merged(&mut run, &mut streams, engine, outputs, &mut summary)
        }
    })?;
    run.finish(engine, outputs, &mut summary)?;
    Ok(summary)
}

/// One input: [`super::files`]'s `one_input` with batches decoded ahead.
fn one_input(
    run: &mut Run<'_>,
    stream: &mut Ordered<Result<DecodedBatch, SourceError>>,
    engine: &mut Engine,
    outputs: &mut OutputFiles,
    summary: &mut ReplaySummary,
) -> Result<(), ReplayError> {
    let counts = &mut summary.counts;
    // The events of each batch borrow its text, in one vector kept from
    // batch to batch: no allocation per event or per batch.
    let mut kept: Vec<AccessEvent<'static>> = Vec::new();
    while let Some(batch) = stream.next_batch() {
        let batch = batch?;
        counts.add(&batch.counts);
        let mut events = relend(kept);
        events.extend((0..batch.len()).map(|index| batch.event(index)));
        run.origins.clear();
        run.origins
            .extend((0..batch.len()).map(|index| origin_of(0, batch.line(index))));
        let origins = std::mem::take(&mut run.origins);
        run.feed_texts(
            engine,
            &events,
            &origins,
            &batch.rejected,
            Texts::Resolved,
            counts,
            outputs,
        )?;
        run.origins = origins;
        kept = relend(events);
        if let Some(bar) = run.progress {
            bar.set_position(batch.bytes_read);
        }
        stream.give_back(batch);
    }
    Ok(())
}

/// Several inputs merged by event time ([`Run::merge`]), each input's
/// batches decoded ahead; an input's next batch is taken (and its
/// rejections written) exactly when one thread would read it.
fn merged(
    run: &mut Run<'_>,
    streams: &mut [Ordered<Result<DecodedBatch, SourceError>>],
    engine: &mut Engine,
    outputs: &mut OutputFiles,
    summary: &mut ReplaySummary,
) -> Result<(), ReplayError> {
    let mut lanes: Vec<DecodedLane<'_>> = streams
        .iter_mut()
        .map(|stream| DecodedLane { stream, bytes_read: 0 })
        .collect();
    // The lanes give the decoders' templates and families (see
    // [`DecodedBatch::push`]): the engine takes them as they are.
    run.merge(&mut lanes, Texts::Resolved, engine, outputs, &mut summary.counts)
}

/// One input of a merged replay, decoded ahead by its own threads.
struct DecodedLane<'s> {
    stream: &'s mut Ordered<Result<DecodedBatch, SourceError>>,
    bytes_read: u64,
}

impl Lane for DecodedLane<'_> {
    fn refill(
        &mut self,
        index: usize,
        queue: &mut PackedEvents,
        rejects: &mut VecDeque<Placed>,
        counts: &mut Counts,
    ) -> Result<bool, ReplayError> {
        let Some(decoded) = self.stream.next_batch() else {
            return Ok(false);
        };
        let mut decoded = decoded?;
        counts.add(&decoded.counts);
        let queued = queue.len();
        rejects.extend(decoded.rejected.drain(..).map(|placed| Placed {
            after: queued + placed.after,
            rejected: placed.rejected,
        }));
        self.bytes_read = decoded.bytes_read;
        if queue.is_empty() {
            // The batch's events become the queue as they are (the emptied
            // queue's holder goes back with the batch), tagged with origins
            // instead of lines.
            std::mem::swap(queue, &mut decoded.events);
            queue.retag(|line| origin_of(index, line));
        } else {
            // A look past the queue's head: the batch's events are added.
            for event in 0..decoded.events.len() {
                queue.push(
                    &decoded.events.event(event),
                    origin_of(index, decoded.events.tag(event)),
                );
            }
        }
        self.stream.give_back(decoded);
        Ok(true)
    }

    fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Format;
    use crate::sink::Rejected;

    #[test]
    fn batches_come_back_in_reading_order_whatever_decoder_finishes_first() {
        let decoders = 3;
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..decoders {
            let (sender, receiver) = sync_channel::<usize>(16);
            senders.push(sender);
            receivers.push(receiver);
        }
        // Batches 0..10 by turns; the last decoder's are sent first, as
        // if it were faster.
        for decoder in (0..decoders).rev() {
            for batch in (decoder..10).step_by(decoders) {
                senders[decoder].send(batch).unwrap();
            }
        }
        drop(senders);
        let mut ordered = Ordered::new(receivers);
        let got: Vec<usize> = std::iter::from_fn(|| ordered.next_batch()).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(ordered.next_batch(), None, "an ended stream stays ended");
    }

    #[test]
    fn the_stream_ends_at_the_first_decoder_with_nothing_more() {
        // Four batches over three decoders: the fifth is due from decoder
        // 1, which has closed; decoder 2 closing too must not matter.
        let (first, first_rx) = sync_channel::<usize>(4);
        let (second, second_rx) = sync_channel::<usize>(4);
        let (third, third_rx) = sync_channel::<usize>(4);
        first.send(0).unwrap();
        second.send(1).unwrap();
        third.send(2).unwrap();
        first.send(3).unwrap();
        drop((first, second, third));
        let mut ordered = Ordered::new(vec![first_rx, second_rx, third_rx]);
        let got: Vec<usize> = std::iter::from_fn(|| ordered.next_batch()).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn spent_batches_come_back_empty_with_their_allocations() {
        let spent = Spent::default();
        let mut batch = spent.take(5);
        let event = AccessEvent {
            ts_ms: 1,
            key_id: "AKIAEXAMPLE1".into(),
            ip: std::net::IpAddr::from([192, 0, 2, 1]),
            method: "GET".into(),
            endpoint: "/v1/orders/8812".into(),
            status: 200,
            user_agent: "sdk/1".into(),
            bytes_out: 0,
            request_id: None,
        };
        batch.push(&event, 9, &mut String::new());
        batch.counts.no_key = 3;
        let capacity = batch.events.text_capacity();
        assert!(capacity > 0);
        spent.give_back(batch);
        let again = spent.take(7);
        assert!(again.events.is_empty() && again.rejected.is_empty());
        assert_eq!(again.counts, Counts::default());
        assert_eq!(again.bytes_read, 7);
        assert_eq!(again.events.text_capacity(), capacity, "the spent batch is reused");
        assert_eq!(spent.take(0).events.text_capacity(), 0, "none spent: a new batch");
    }

    #[test]
    fn a_decoded_batch_gives_back_the_events_and_rejections_of_one_thread() {
        let lines = [
            r#"{"ts":"2026-03-01T12:00:00Z","key_id":"AKIAIOSFODNN7EXAMPLE","ip":"192.0.2.1","method":"GET","endpoint":"/v1/a\u0020b","status":200,"user_agent":"sdk/1","bytes_out":5,"request_id":"r1"}"#,
            "{not json",
            r#"{"ts":"2026-03-01T12:00:01Z","ip":"192.0.2.1","method":"GET","endpoint":"/","status":200}"#,
            r#"{"ts":"2026-03-01T12:00:02Z","key_id":"AKIAIOSFODNN7EXAMPLF","ip":"2001:db8::1","method":"POST","endpoint":"/v1/b","status":401}"#,
        ];
        let mut buffer = Vec::new();
        let mut spans = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            let start = buffer.len();
            buffer.extend_from_slice(line.as_bytes());
            spans.push(RecordSpan {
                range: start..buffer.len(),
                line: index as u64 + 1,
                oversized: None,
            });
            buffer.push(b'\n');
        }
        let decoder = Decoder::new(Format::Auto, None, 1 << 20);
        let batch = decode_batch(
            &decoder,
            "input.jsonl",
            &buffer,
            &spans,
            Spent::default().take(99),
            &mut String::new(),
        );

        let mut counts = Counts::default();
        let mut rejected = Vec::new();
        let mut events = Vec::new();
        let seen = std::cell::Cell::new(0);
        let mut scratch = Vec::new();
        for span in &spans {
            decode_span(
                &decoder,
                &buffer,
                span,
                "input.jsonl",
                &mut scratch,
                &mut counts,
                |rejection| rejected.push((seen.get(), rejection)),
                |event| {
                    events.push((event.into_owned(), span.line));
                    seen.set(seen.get() + 1);
                },
            );
        }
        assert_eq!(batch.counts, counts);
        let placed: Vec<(usize, Rejected)> = batch
            .rejected
            .iter()
            .map(|placed| (placed.after, placed.rejected.clone()))
            .collect();
        assert_eq!(placed, rejected);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].after, 1, "the bad line comes after the first event");
        assert_eq!(batch.counts.no_key, 1);
        assert_eq!(batch.bytes_read, 99);
        let unpacked: Vec<(AccessEvent<'static>, u64)> = (0..batch.len())
            .map(|index| (batch.event(index).into_owned(), batch.line(index)))
            .collect();
        assert_eq!(unpacked.len(), events.len());
        for ((packed, packed_line), (event, line)) in unpacked.iter().zip(&events) {
            assert_eq!(packed_line, line);
            let mut scratch = String::new();
            let template = normalize_endpoint(&event.endpoint, &mut scratch).to_string();
            assert_eq!(packed.endpoint, template, "the endpoint goes as its template");
            assert_eq!(packed.user_agent, client_family(&event.user_agent));
            let same_otherwise = AccessEvent {
                endpoint: packed.endpoint.clone(),
                user_agent: packed.user_agent.clone(),
                ..event.clone()
            };
            assert_eq!(packed, &same_otherwise);
        }
        assert_eq!(unpacked[0].0.endpoint, "/v1/a b", "unescaped text survives packing");
        assert_eq!(unpacked[0].0.user_agent, "sdk");
        assert_eq!(unpacked[0].0.request_id.as_deref(), Some("r1"));
    }
}
