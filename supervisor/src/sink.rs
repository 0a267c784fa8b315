//! A non-blocking writer to a client's FIFO: the queue of lines not yet
//! written, drained whenever the pipe has room. Subscribers and replies are
//! both sinks, so a slow reader never blocks the loop and costs the others
//! nothing. A subscriber's queue is bounded: past its limit it gets one
//! `overflow` line and end-of-file, never a silent gap.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use rustix::io::Errno;

use crate::event::Published;

/// One queued line: a shared event or a line of its own (a reply, the
/// overflow notice).
enum Chunk {
    Event(Rc<Published>),
    Line(Box<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Event(e) => &e.line,
            Chunk::Line(l) => l,
        }
    }
}

/// What a flush left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The pipe is full; the rest waits for the next writable event.
    Pending,
    /// The sink is done: its reader went away, or it was closing and has
    /// written its last line.
    Done,
}

/// A FIFO's write end and what is queued for it.
pub struct Sink {
    fd: OwnedFd,
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    written: usize,
    queued_bytes: usize,
    limit: usize,
    closing: bool,
}

impl Sink {
    /// A sink whose queue may hold `limit` bytes (usize::MAX: unbounded).
    pub fn new(fd: OwnedFd, limit: usize) -> Self {
        Sink { fd, queue: VecDeque::new(), written: 0, queued_bytes: 0, limit, closing: false }
    }

    /// The fd, for (de)registering with the poll.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Whether the sink takes no more lines.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues a line of its own; the caller flushes.
    pub fn push_line(&mut self, line: Vec<u8>) {
        self.queued_bytes += line.len();
        self.queue.push_back(Chunk::Line(line.into()));
    }

    /// Queues an event unless that would go over the limit. On overflow,
    /// drops every queued event not yet begun, queues
    /// `{"type":"overflow","next":N}` (N: the first seq the reader will not
    /// get) and closes once that is written. Returns false on overflow.
    pub fn push_event(&mut self, event: &Rc<Published>) -> bool {
        if self.closing {
            return false;
        }
        // Full: first let the pipe take what it can, so that a reader who
        // keeps up is never cut off by a burst (or a long replay).
        if self.queued_bytes + event.line.len() > self.limit && self.flush() == Flushed::Done {
            return false;
        }
        // An empty queue always takes one event, however small the limit:
        // otherwise a line longer than the limit could never be delivered.
        if self.has_room(event.line.len()) {
            self.enqueue(event.clone());
            return true;
        }
        self.overflow(event.seq);
        false
    }

    /// Whether a line of `bytes` fits under the limit (an empty queue takes
    /// any line). A replay is queued only while it fits, so it never
    /// overflows: it waits for its reader instead.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.queue.is_empty() || self.queued_bytes + bytes <= self.limit
    }

    /// Bytes that fit under the limit now.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.queued_bytes)
    }

    /// Queues an event of a replay, which the caller keeps within the limit
    /// with [`Sink::has_room`].
    pub fn push_replay(&mut self, event: Rc<Published>) {
        self.enqueue(event);
    }

    fn enqueue(&mut self, event: Rc<Published>) {
        self.queued_bytes += event.line.len();
        self.queue.push_back(Chunk::Event(event));
    }

    /// Ends the stream early with the overflow line, at the first event not
    /// begun or at `owed` (the first seq it was owed beyond its queue),
    /// whichever comes first; without either, it only closes. For the end of
    /// a supervisor whose subscriber did not read its last events: so that
    /// the gap is not silent, the pipe is grown to take the line (the reader
    /// finds it after what the pipe holds). Returns whether a line was due.
    pub fn cut_off(&mut self, owed: Option<u64>) -> bool {
        if self.closing {
            return false;
        }
        let keep = usize::from(self.written > 0);
        let first_unbegun = self.queue.iter().skip(keep).find_map(|c| match c {
            Chunk::Event(e) => Some(e.seq),
            Chunk::Line(_) => None,
        });
        let Some(next) = first_unbegun.into_iter().chain(owed).min() else {
            self.closing = true;
            return false;
        };
        self.overflow(next);
        if let Ok(size) = rustix::pipe::fcntl_getpipe_size(&self.fd) {
            let _ = rustix::pipe::fcntl_setpipe_size(&self.fd, size.saturating_mul(2));
        }
        true
    }

    /// Drops every queued line not yet begun, queues
    /// `{"type":"overflow","next":N}` — N the first seq the reader will not
    /// get — and closes once that is written.
    fn overflow(&mut self, next: u64) {
        // Keep the chunk being written (a torn line would corrupt the
        // stream); everything behind it is dropped and re-read by `since`.
        let keep = usize::from(self.written > 0);
        let mut next = next;
        for dropped in self.queue.drain(keep..) {
            if let Chunk::Event(e) = &dropped {
                next = next.min(e.seq);
            }
        }
        self.queued_bytes = self.queue.iter().map(|c| c.bytes().len()).sum::<usize>() - self.written;
        self.push_line(format!("{{\"type\":\"overflow\",\"next\":{next}}}\n").into_bytes());
        self.closing = true;
    }

    /// Marks the sink to close once its queue is written (a reply).
    pub fn close_when_drained(&mut self) {
        self.closing = true;
    }

    /// Writes as much as the pipe takes, until it is full or the queue empty.
    pub fn flush(&mut self) -> Flushed {
        while !self.queue.is_empty() {
            // One line, the common case of a live event: write(2), no slices.
            if self.queue.len() == 1 {
                match rustix::io::write(&self.fd, &self.queue[0].bytes()[self.written..]) {
                    Ok(n) => {
                        self.queued_bytes -= n;
                        self.written += n;
                        if self.written == self.queue[0].bytes().len() {
                            self.written = 0;
                            self.queue.pop_front();
                        }
                        continue;
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => return Flushed::Pending,
                    Err(_) => return Flushed::Done,
                }
            }
            // Up to 64 lines a writev(2), the first one from where it stopped.
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.queue.len().min(64));
            for (i, chunk) in self.queue.iter().take(64).enumerate() {
                let bytes = chunk.bytes();
                slices.push(IoSlice::new(if i == 0 { &bytes[self.written..] } else { bytes }));
            }
            match rustix::io::writev(&self.fd, &slices) {
                Ok(mut n) => {
                    drop(slices);
                    self.queued_bytes -= n;
                    while n > 0 {
                        let left = self.queue[0].bytes().len() - self.written;
                        if n >= left {
                            n -= left;
                            self.written = 0;
                            self.queue.pop_front();
                        } else {
                            self.written += n;
                            n = 0;
                        }
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Flushed::Pending,
                // EPIPE: the reader went away (SIGPIPE is ignored by the Rust
                // runtime, so this is an errno, not a signal).
                Err(_) => return Flushed::Done,
            }
        }
        if self.closing {
            Flushed::Done
        } else {
            Flushed::Drained
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn published(seq: u64) -> Rc<Published> {
        crate::event::test_event(seq)
    }

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        (std::fs::File::from(r), w)
    }

    #[test]
    fn overflow_drops_unbegun_lines_and_names_the_first_lost_seq() {
        let (mut reader, w) = pipe();
        // Fill the pipe so that nothing more can be written.
        let filler = vec![b'x'; 1 << 20];
        let mut pipe_full = 0;
        while let Ok(n) = rustix::io::write(&w, &filler) {
            pipe_full += n;
        }
        let one = published(1).line.len();
        let mut sink = Sink::new(w, one * 3);
        for seq in 1..=3 {
            assert!(sink.push_event(&published(seq)));
        }
        assert!(!sink.push_event(&published(4)));
        assert!(!sink.push_event(&published(5)), "closed after overflow");
        let mut drained = vec![0u8; pipe_full];
        reader.read_exact(&mut drained).unwrap();
        assert_eq!(sink.flush(), Flushed::Done);
        drop(sink);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"type\":\"overflow\",\"next\":1}\n");
    }

    #[test]
    fn a_full_queue_drains_into_the_pipe_before_it_overflows() {
        let (mut reader, w) = pipe();
        let one = published(1).line.len();
        let mut sink = Sink::new(w, one * 3);
        for seq in 1..=10 {
            assert!(sink.push_event(&published(seq)), "the pipe has room for {seq}");
        }
        assert_eq!(sink.flush(), Flushed::Drained);
        drop(sink);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text.lines().count(), 10);
    }

    #[test]
    fn partial_writes_resume_without_tearing_lines() {
        let (mut reader, w) = pipe();
        let mut sink = Sink::new(w, usize::MAX);
        let mut expected = Vec::new();
        for seq in 1..=2000 {
            let e = published(seq);
            expected.extend_from_slice(&e.line);
            sink.push_event(&e);
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let state = sink.flush();
            loop {
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            if state == Flushed::Drained {
                break;
            }
        }
        assert_eq!(got, expected);
        assert_eq!(sink.queued_bytes(), 0);
    }

    #[test]
    fn a_vanished_reader_ends_the_sink() {
        let (reader, w) = pipe();
        drop(reader);
        let mut sink = Sink::new(w, usize::MAX);
        sink.push_line(b"x\n".to_vec());
        assert_eq!(sink.flush(), Flushed::Done);
    }
}
