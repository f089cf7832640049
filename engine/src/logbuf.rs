//! Log lines written on a core's executor thread go to the log thread in
//! batches, not one by one.
//!
//! `tracing_appender::non_blocking` hands every line to its thread through
//! a channel, and each hand-off to a sleeping log thread is a futex wake:
//! at one line per accepted message that was 4.9% of a node's CPU samples
//! at 5 000 msgs/s (`perf record -a`, wake-ups cross CPUs on this VM),
//! plus the log thread's own wake-ups. [`Batched`] keeps a core's lines in
//! a thread-local buffer instead and hands the buffer over as one message
//! when it reaches [`BATCH_BYTES`] or when the core's [`flusher`] task
//! comes round ([`FLUSH_EVERY`] after the batch's first line; an idle
//! core arms no timer); a WARN or ERROR line goes at once
//! (after the core's lines before it). Threads that never called
//! [`batch_this_thread`] (main, signal, admin, DNS, blocking threads)
//! write straight through.
//!
//! What it costs: a core's INFO or DEBUG line reaches stderr up to
//! [`FLUSH_EVERY`] later; lines of different threads interleave by batch
//! (each core's in order; a line of the signal or admin thread can come
//! before a core's earlier lines); and a process that ends without its
//! cores stopping (SIGKILL, or the immediate exit on a second SIGTERM)
//! loses the INFO lines of its last [`FLUSH_EVERY`], as it loses those
//! queued for the log thread. Warnings and errors are not held back. [`end_batching`] flushes at a
//! core's clean exit.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Write};
use std::sync::OnceLock;
use std::task::{Poll, Waker};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// A core hands its buffered lines over when they reach this size.
pub const BATCH_BYTES: usize = 32 << 10;
/// ... and at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// Where [`flusher`] and [`end_batching`] hand batches (set by [`install`]).
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;
static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// `Some` on a thread that batches: its lines not yet handed over.
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// The core's [`flusher`] while it waits for a first line (an idle
    /// core arms no timer).
    static FLUSHER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// A `MakeWriter` that batches on core threads and writes through to `W`
/// everywhere else.
#[derive(Clone, Debug)]
pub struct Batched<W> {
    inner: W,
}

impl<W> Batched<W> {
    /// Batches what goes to `inner`.
    fn new(inner: W) -> Batched<W> {
        Batched { inner }
    }
}

/// The process's log writer: batches to `inner` (the log thread's
/// writer), which the cores' [`flusher`] tasks also hand their batches to.
pub fn install<W: Write + Clone + Send + Sync + 'static>(inner: W) -> Batched<W> {
    let sink = inner.clone();
    let installed = SINK.set(Box::new(move |b: &[u8]| {
        let _ = sink.clone().write_all(b);
    }));
    // A second writer would split a core's lines between the two.
    assert!(installed.is_ok(), "logbuf::install called twice");
    Batched::new(inner)
}

impl<'a, W: Write + Clone + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = BatchWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchWriter {
            inner: self.inner.clone(),
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        BatchWriter {
            inner: self.inner.clone(),
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// One event's writer (see [`Batched`]).
#[derive(Debug)]
pub struct BatchWriter<W> {
    inner: W,
    /// A WARN or ERROR line: goes at once, after the lines before it.
    urgent: bool,
}

impl<W: Write> Write for BatchWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.urgent {
            hand_over(&mut |b: &[u8]| {
                let _ = self.inner.write_all(b);
            });
            return self.inner.write(buf);
        }
        let full = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let pending = p.as_mut()?;
            let first = pending.is_empty();
            pending.extend_from_slice(buf);
            Some((
                first,
                (pending.len() >= BATCH_BYTES).then(|| take_batch(pending)),
            ))
        });
        if let Some((true, _)) = full {
            // The first line since the last hand-over starts the
            // flusher's clock (woken outside the borrow of PENDING: a
            // wake-up that logs must not find it borrowed).
            if let Some(w) = FLUSHER.with(|f| f.borrow_mut().take()) {
                w.wake();
            }
        }
        let full = full.map(|(_, batch)| batch);
        match full {
            // Not a batching thread.
            None => self.inner.write(buf),
            Some(None) => Ok(buf.len()),
            Some(Some(batch)) => {
                self.inner.write_all(&batch)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Makes the calling thread batch its log lines (a core's executor
/// thread, which then runs [`flusher`]) until the guard is dropped, which
/// hands over what is left.
pub fn batch_this_thread() -> Batching {
    PENDING.with(|p| {
        p.borrow_mut()
            .get_or_insert_with(|| Vec::with_capacity(BATCH_BYTES));
    });
    Batching(std::marker::PhantomData)
}

/// Batching on this thread; dropping it calls [`end_batching`].
#[must_use = "dropping it ends batching at once"]
pub struct Batching(std::marker::PhantomData<*const ()>);

impl Drop for Batching {
    fn drop(&mut self) {
        end_batching();
    }
}

/// Hands this thread's buffered lines to `out`.
fn hand_over(out: &mut dyn FnMut(&[u8])) {
    let batch = PENDING.with(|p| {
        p.borrow_mut()
            .as_mut()
            .filter(|b| !b.is_empty())
            .map(take_batch)
    });
    if let Some(batch) = batch {
        out(&batch);
    }
}

/// The buffered lines, leaving a buffer of full size (no regrowth).
fn take_batch(pending: &mut Vec<u8>) -> Vec<u8> {
    std::mem::replace(pending, Vec::with_capacity(BATCH_BYTES))
}

fn hand_to_sink() {
    if let Some(sink) = SINK.get() {
        hand_over(&mut |b: &[u8]| sink(b));
    }
}

/// A core's task: hands the core's lines over [`FLUSH_EVERY`] after the
/// first one of a batch; sleeps without a timer while there is none.
pub async fn flusher() {
    loop {
        poll_fn(|cx| {
            let waiting = PENDING.with(|p| p.borrow().as_ref().is_some_and(|b| !b.is_empty()));
            if waiting {
                Poll::Ready(())
            } else {
                FLUSHER.with(|f| *f.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        glommio::timer::sleep(FLUSH_EVERY).await;
        hand_to_sink();
    }
}

/// Hands over what is buffered and stops batching on this thread (a
/// core's last lines, e.g. "core stopped", then go straight through).
pub fn end_batching() {
    hand_to_sink();
    PENDING.with(|p| p.borrow_mut().take());
    FLUSHER.with(|f| f.borrow_mut().take());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records every write it gets, one entry per call.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(b: &Batched<Writes>, s: &str) {
        b.make_writer().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn other_threads_write_through() {
        let w = Writes::default();
        let b = Batched::new(w.clone());
        line(&b, "one\n");
        line(&b, "two\n");
        assert_eq!(
            *w.0.lock().unwrap(),
            vec![b"one\n".to_vec(), b"two\n".to_vec()]
        );
    }

    #[test]
    fn a_batching_thread_hands_over_full_batches_and_on_flush() {
        std::thread::spawn(|| {
            let w = Writes::default();
            let b = Batched::new(w.clone());
            let batching = batch_this_thread();
            line(&b, "a\n");
            line(&b, "b\n");
            assert!(w.0.lock().unwrap().is_empty(), "held until a flush");
            let mut write = |b: &[u8]| w.clone().write_all(b).unwrap();
            let out = &mut write;
            hand_over(out);
            assert_eq!(*w.0.lock().unwrap(), vec![b"a\nb\n".to_vec()]);
            hand_over(out);
            assert_eq!(
                w.0.lock().unwrap().len(),
                1,
                "nothing buffered, nothing written"
            );

            // A batch that reaches BATCH_BYTES goes at once, in one write.
            let long = "x".repeat(BATCH_BYTES / 2) + "\n";
            line(&b, &long);
            line(&b, &long);
            let writes = w.0.lock().unwrap().clone();
            assert_eq!(writes.len(), 2);
            assert_eq!(writes[1], format!("{long}{long}").into_bytes());

            // Through a real subscriber: a warning takes the lines before
            // it along, at once; info lines wait.
            let sub = tracing_subscriber::fmt()
                .with_writer(b.clone())
                .with_ansi(false)
                .without_time()
                .finish();
            tracing::subscriber::with_default(sub, || {
                tracing::info!("first");
                tracing::warn!("second");
                tracing::info!("third");
            });
            let writes = w.0.lock().unwrap().clone();
            assert_eq!(writes.len(), 4, "{writes:?}");
            let (held, warned) = (
                String::from_utf8_lossy(&writes[2]),
                String::from_utf8_lossy(&writes[3]),
            );
            assert!(held.contains("first") && !held.contains("second"), "{held}");
            assert!(
                warned.contains("WARN") && warned.contains("second"),
                "{warned}"
            );
            hand_over(out);
            assert!(String::from_utf8_lossy(&w.0.lock().unwrap()[4]).contains("third"));
            w.0.lock().unwrap().truncate(2);

            line(&b, "last\n");
            hand_over(out);
            drop(batching);
            line(&b, "after\n");
            let writes = w.0.lock().unwrap().clone();
            assert_eq!(writes[2..], [b"last\n".to_vec(), b"after\n".to_vec()]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_flusher_hands_a_core_s_lines_over_after_flush_every_and_idles_without_a_timer() {
        let w = Writes::default();
        let b = install(w.clone());
        let writes = w.0.clone();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let batching = batch_this_thread();
                glommio::spawn_local(flusher()).detach();
                glommio::timer::sleep(FLUSH_EVERY * 3).await;
                assert!(
                    writes.lock().unwrap().is_empty(),
                    "nothing logged, nothing written"
                );
                assert!(
                    FLUSHER.with(|f| f.borrow().is_some()),
                    "the flusher waits for a line, no timer"
                );

                line(&b, "one\n");
                line(&b, "two\n");
                assert!(writes.lock().unwrap().is_empty(), "held for FLUSH_EVERY");
                glommio::timer::sleep(FLUSH_EVERY * 3).await;
                assert_eq!(*writes.lock().unwrap(), vec![b"one\ntwo\n".to_vec()]);

                // And again after an idle spell.
                glommio::timer::sleep(FLUSH_EVERY * 3).await;
                line(&b, "three\n");
                glommio::timer::sleep(FLUSH_EVERY * 3).await;
                assert_eq!(writes.lock().unwrap().len(), 2);
                drop(batching);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

/// A failure that recurs (every maintenance pass, every accept attempt):
/// logged once when it starts, again only if it changes or lasted
/// [`Repeated::EVERY`], and once more when it ends. Single-threaded.
#[derive(Default)]
pub struct Repeated {
    last: std::cell::RefCell<Option<(String, std::time::Instant, u64)>>,
}

impl Repeated {
    /// How often a lasting failure is logged again.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Reports this pass's outcome of `what`: `Some(error)` or `None` (ok).
    pub fn report(&self, what: &str, error: Option<String>) {
        let mut last = self.last.borrow_mut();
        match (error, last.as_mut()) {
            (None, None) => {}
            (None, Some((e, _, n))) => {
                tracing::info!(error = %e, times = *n, "{what}: recovered");
                *last = None;
            }
            (Some(e), Some((prev, at, n))) if *prev == e && at.elapsed() < Self::EVERY => {
                *n += 1;
            }
            (Some(e), prev) => {
                let times = prev.map_or(1, |(_, _, n)| *n + 1);
                tracing::error!(error = %e, times, "{what}");
                *last = Some((e, std::time::Instant::now(), 1));
            }
        }
    }
}
