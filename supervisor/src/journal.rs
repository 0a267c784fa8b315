//! The event journal, `events.jsonl` in the root: every event is appended
//! before it is fanned out, so after a crash it holds everything any
//! subscriber saw. It is capped in size by rotating to `events.jsonl.1`. On
//! start it tells the next `seq`, and it serves `since` beyond the in-memory
//! ring through a [`Cursor`]: a subscriber catching up reads it a piece at a
//! time, at the pace its reader takes the lines, from a position found by
//! binary search.
//!
//! Events are written with write(2), not fsync'd: they survive the
//! supervisor's death (the page cache outlives the process), not a power cut.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Published;

/// The journal's file name in the root.
pub const JOURNAL_FILE: &str = "events.jsonl";

/// The append-only, rotated event journal.
pub struct Journal {
    path: PathBuf,
    rotated: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    /// Counts rotations: the current file is this generation, the rotated
    /// one the one before.
    generation: u64,
}

/// A reading position: the offset of the next line in one of the journal's
/// files, named by its generation so that a rotation cannot mislead it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    generation: u64,
    offset: u64,
}

/// One event line read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    /// Its seq.
    pub seq: u64,
    /// The line, with its newline.
    pub bytes: Vec<u8>,
    /// Where the line after it starts: a reader that takes this line and
    /// no more resumes there.
    pub next: Cursor,
}

/// What [`Journal::read`] found at a cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Lines {
    /// Whole event lines, oldest first.
    Some(Vec<Line>),
    /// Nothing more: the cursor is at the end of the journal.
    End,
    /// The cursor's file was rotated away: its lines are gone.
    Gone,
}

/// The most bytes read at a time while looking for a line's end.
const READ_CHUNK: usize = 64 * 1024;

/// The least: about two event lines.
const MIN_READ: usize = 512;

impl Journal {
    /// Opens (creating) the journal in `root`, capped at `max_size` bytes a
    /// file, and returns it with the last seq it holds (0 when empty).
    pub fn open(root: &Path, max_size: u64) -> Result<(Self, u64)> {
        let path = root.join(JOURNAL_FILE);
        let rotated = root.join(format!("{JOURNAL_FILE}.1"));
        let mut file = open_append(&path)?;
        let mut size =
            file.metadata().map_err(|e| Error::os(ErrorKind::System, format!("stat {}", path.display()), e))?.len();
        // A crash can leave a torn last line: end it, so the next event
        // starts on a line of its own and every reader can skip the torn one.
        if size > 0 && last_byte(&path)? != Some(b'\n') {
            file.write_all(b"\n").map_err(|e| Error::os(ErrorKind::System, format!("write {}", path.display()), e))?;
            size += 1;
        }
        let mut last = last_seq(&path)?;
        if last == 0 {
            last = last_seq(&rotated)?;
        }
        Ok((Journal { path, rotated, file, size, max_size, generation: 1 }, last))
    }

    /// Appends a batch of events, one write per file: the batch is split
    /// where the file would go over its cap, and the file rotated there.
    pub fn append(&mut self, batch: &[Rc<Published>]) -> Result<()> {
        let mut bytes: Vec<u8> = Vec::new();
        for event in batch {
            let full = self.size + (bytes.len() + event.line.len()) as u64 > self.max_size;
            if full && self.size + bytes.len() as u64 > 0 {
                self.write(&bytes)?;
                bytes.clear();
                self.rotate()?;
            }
            bytes.extend_from_slice(&event.line);
        }
        self.write(&bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(bytes)
            .map_err(|e| Error::os(ErrorKind::System, format!("append to {}", self.path.display()), e))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        match std::fs::rename(&self.path, &self.rotated) {
            // The generations follow the renames: the old file is `.1` now.
            Ok(()) => self.generation += 1,
            // Renamed before, but the reopen failed: just reopen.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::os(
                    ErrorKind::System,
                    format!("rotate {} to {}", self.path.display(), self.rotated.display()),
                    e,
                ))
            }
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// The file of a generation, while the journal still has it.
    fn file_of(&self, generation: u64) -> Option<&Path> {
        if generation == self.generation {
            Some(&self.path)
        } else if generation + 1 == self.generation {
            Some(&self.rotated)
        } else {
            None
        }
    }

    /// The seq of the oldest event the journal holds, if any.
    pub fn first_seq(&self) -> Result<Option<u64>> {
        let mut cursor = Cursor { generation: self.generation - 1, offset: 0 };
        loop {
            match self.read(&mut cursor, 1)? {
                Lines::Some(lines) => {
                    if let Some(line) = lines.first() {
                        return Ok(Some(line.seq));
                    }
                }
                Lines::End | Lines::Gone => return Ok(None),
            }
        }
    }

    /// A cursor at the first line with seq `seq` or greater (at the end of
    /// the journal when there is none), found by binary search: the lines of
    /// both files are in seq order.
    pub fn seek(&self, seq: u64) -> Result<Cursor> {
        for generation in [self.generation - 1, self.generation] {
            let path = self.file_of(generation).expect("both generations are kept");
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::os(ErrorKind::System, format!("open {}", path.display()), e)),
            };
            let len =
                file.metadata().map_err(|e| Error::os(ErrorKind::System, format!("stat {}", path.display()), e))?.len();
            let offset = find_line(&file, len, seq)
                .map_err(|e| Error::os(ErrorKind::System, format!("read {}", path.display()), e))?;
            // Past the end of the rotated file: it is in the current one.
            if offset < len || generation == self.generation {
                return Ok(Cursor { generation, offset });
            }
        }
        Ok(Cursor { generation: self.generation, offset: self.size })
    }

    /// Reads the whole event lines in about `max_bytes` from `cursor` on
    /// (at least one line), and moves the cursor past them. Torn lines (a
    /// crash mid-write) are skipped.
    pub fn read(&self, cursor: &mut Cursor, max_bytes: usize) -> Result<Lines> {
        loop {
            let Some(path) = self.file_of(cursor.generation) else { return Ok(Lines::Gone) };
            let what = |verb: &str, e| Error::os(ErrorKind::System, format!("{verb} {}", path.display()), e);
            let mut file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && cursor.generation < self.generation => {
                    *cursor = Cursor { generation: cursor.generation + 1, offset: 0 };
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lines::End),
                Err(e) => return Err(what("open", e)),
            };
            file.seek(SeekFrom::Start(cursor.offset)).map_err(|e| what("seek", e))?;
            // About `max_bytes`, and on until a whole line is in (or the file
            // ends): no more is read than the caller can take.
            let chunk = max_bytes.clamp(MIN_READ, READ_CHUNK) as u64;
            let mut buf = Vec::new();
            let whole = loop {
                let got = (&mut file).take(chunk).read_to_end(&mut buf).map_err(|e| what("read", e))?;
                let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                if got == 0 || (end > 0 && buf.len() >= max_bytes) {
                    break end;
                }
            };
            if whole == 0 {
                // The end of this file: on to the next, or the end.
                if cursor.generation < self.generation {
                    *cursor = Cursor { generation: cursor.generation + 1, offset: 0 };
                    continue;
                }
                return Ok(Lines::End);
            }
            let mut lines = Vec::new();
            let mut next = *cursor;
            for line in buf[..whole].split_inclusive(|b| *b == b'\n') {
                next.offset += line.len() as u64;
                if let Some(seq) = line_seq(line).filter(|_| is_json(&line[..line.len() - 1])) {
                    lines.push(Line { seq, bytes: line.to_vec(), next });
                }
            }
            *cursor = next;
            return Ok(Lines::Some(lines));
        }
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::os(ErrorKind::System, format!("open journal {}", path.display()), e))
}

fn last_byte(path: &Path) -> Result<Option<u8>> {
    let mut file = File::open(path).map_err(|e| Error::os(ErrorKind::System, format!("open {}", path.display()), e))?;
    if file.seek(SeekFrom::End(-1)).is_err() {
        return Ok(None);
    }
    let mut byte = [0u8];
    match file.read(&mut byte) {
        Ok(1) => Ok(Some(byte[0])),
        _ => Ok(None),
    }
}

/// The greatest seq among the complete lines at the end of a journal file.
fn last_seq(path: &Path) -> Result<u64> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::os(ErrorKind::System, format!("open {}", path.display()), e)),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // The last 64 KiB hold many whole lines; an event line is a few hundred bytes.
    let from = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(from))
        .map_err(|e| Error::os(ErrorKind::System, format!("seek {}", path.display()), e))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| Error::os(ErrorKind::System, format!("read {}", path.display()), e))?;
    // Only whole lines count: not the piece before the first newline when
    // we started mid-file, nor a torn piece after the last newline.
    let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
    lines.pop();
    let skip = usize::from(from > 0);
    Ok(lines
        .into_iter()
        .skip(skip)
        .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
        .filter_map(line_seq)
        .max()
        .unwrap_or(0))
}

/// The offset of the first line with seq `seq` or greater in a journal
/// file of `len` bytes (`len` when there is none): a binary search over line
/// starts while the window is large, then a scan.
fn find_line(file: &File, len: u64, seq: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // Every line starting before `lo` has a smaller seq; the answer is a
    // line start in lo..=hi.
    let (mut lo, mut hi) = (0u64, len);
    let mut probe = vec![0u8; 4096];
    while hi - lo > READ_CHUNK as u64 {
        let mid = lo + (hi - lo) / 2;
        // The first line starting after `mid`, and its seq.
        let n = file.read_at(&mut probe, mid)?;
        let Some(nl) = probe[..n].iter().position(|b| *b == b'\n') else { break };
        let start = mid + nl as u64 + 1;
        if start >= hi {
            break;
        }
        let n = file.read_at(&mut probe[..32], start)?;
        match line_seq(&probe[..n]) {
            Some(found) if found < seq => lo = start,
            Some(_) => hi = start,
            None => break,
        }
    }
    // The scan, from a line start.
    let mut offset = lo;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = file.read_at(&mut buf, offset + pending.len() as u64)?;
        if n == 0 {
            return Ok(len);
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + nl];
            if line_seq(line).is_some_and(|found| found >= seq) {
                return Ok(offset + start as u64);
            }
            start += nl + 1;
        }
        offset += start as u64;
        pending.drain(..start);
    }
}

fn is_json(line: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
}

/// The seq of a journal line, which always begins `{"seq":N,`.
fn line_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(seq: u64) -> Rc<Published> {
        crate::event::test_event(seq)
    }

    #[test]
    fn continues_seq_rotates_and_reads_back() {
        let dir = temp_dir("rotate");
        let (mut journal, last) = Journal::open(&dir, 1000).unwrap();
        assert_eq!(last, 0);
        for seq in 1..=20 {
            journal.append(&[published(seq)]).unwrap();
        }
        assert!(dir.join("events.jsonl.1").exists(), "rotated");
        drop(journal);
        // A torn line, as a crash mid-write would leave.
        let mut f = OpenOptions::new().append(true).open(dir.join(JOURNAL_FILE)).unwrap();
        f.write_all(b"{\"seq\":21,\"ty").unwrap();
        let (mut journal, last) = Journal::open(&dir, 1000).unwrap();
        assert_eq!(last, 20);
        journal.append(&[published(21)]).unwrap();
        let seqs = read_all(&journal, 0);
        assert!(seqs.ends_with(&[19, 20, 21]), "{seqs:?}");
        assert_eq!(journal.first_seq().unwrap(), seqs.first().copied());
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let (_, last) = Journal::open(&dir, 1000).unwrap();
        assert_eq!(last, 21);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn read_all(journal: &Journal, from: u64) -> Vec<u64> {
        let mut cursor = journal.seek(from).unwrap();
        let mut seqs = Vec::new();
        loop {
            match journal.read(&mut cursor, 100).unwrap() {
                Lines::Some(lines) => seqs.extend(lines.into_iter().map(|line| line.seq)),
                Lines::End => return seqs,
                Lines::Gone => panic!("cursor gone"),
            }
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pidvisor-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn seek_finds_every_seq_in_both_files() {
        let dir = temp_dir("seek");
        // Two files of a few hundred KiB each: the binary search has work.
        let (mut journal, _) = Journal::open(&dir, 200 << 10).unwrap();
        for seq in 1..=5000 {
            journal.append(&[published(seq)]).unwrap();
        }
        let first = journal.first_seq().unwrap().unwrap();
        assert!(first > 1, "rotated: {first}");
        for from in [0, first, first + 1, 2500, 4999, 5000] {
            let want: Vec<u64> = (from.max(first)..=5000).collect();
            assert_eq!(read_all(&journal, from), want, "from {from}");
        }
        assert_eq!(read_all(&journal, 5001), Vec::<u64>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_larger_than_the_cap_is_split_across_rotations() {
        let dir = temp_dir("batch");
        let (mut journal, _) = Journal::open(&dir, 1000).unwrap();
        let batch: Vec<_> = (1..=40).map(published).collect();
        journal.append(&batch).unwrap();
        for name in [JOURNAL_FILE, "events.jsonl.1"] {
            let len = std::fs::metadata(dir.join(name)).unwrap().len();
            assert!(len <= 1000, "{name}: {len} bytes over the cap of 1000");
        }
        let seqs = read_all(&journal, 0);
        assert_eq!(seqs.last(), Some(&40));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cursor_whose_file_was_rotated_away_is_gone() {
        let dir = temp_dir("gone");
        let (mut journal, _) = Journal::open(&dir, 1000).unwrap();
        for seq in 1..=10 {
            journal.append(&[published(seq)]).unwrap();
        }
        let mut cursor = journal.seek(journal.first_seq().unwrap().unwrap()).unwrap();
        assert!(matches!(journal.read(&mut cursor, 1).unwrap(), Lines::Some(_)));
        for seq in 11..=40 {
            journal.append(&[published(seq)]).unwrap();
        }
        assert_eq!(journal.read(&mut cursor, 1).unwrap(), Lines::Gone);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_seq_reads_only_whole_prefixes() {
        assert_eq!(line_seq(b"{\"seq\":42,\"type\":1}"), Some(42));
        assert_eq!(line_seq(b"{\"seq\":4"), None);
        assert_eq!(line_seq(b"garbage"), None);
    }
}
