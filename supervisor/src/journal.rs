//! The event journal, `events.jsonl` in the root: every event is appended
//! before it is fanned out, so after a crash it holds everything any
//! subscriber saw. It is capped in size by rotating to `events.jsonl.1`. On
//! start it tells the next `seq`, and it serves `since` beyond the in-memory
//! ring.
//!
//! Events are written with write(2), not fsync'd: they survive the
//! supervisor's death (the page cache outlives the process), not a power cut.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
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
}

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
        Ok((Journal { path, rotated, file, size, max_size }, last))
    }

    /// Appends a batch of events with one write, rotating first when the
    /// batch would take the file over its cap.
    pub fn append(&mut self, batch: &[Rc<Published>]) -> Result<()> {
        let bytes: Vec<u8> = batch.iter().flat_map(|e| e.line.iter().copied()).collect();
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::os(ErrorKind::System, format!("append to {}", self.path.display()), e))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        match std::fs::rename(&self.path, &self.rotated) {
            Ok(()) => {}
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

    /// Every journaled event line with seq > `since` and < `before`, oldest
    /// first, from the rotated file and then the current one.
    pub fn read_since(&self, since: u64, before: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for path in [&self.rotated, &self.path] {
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::os(ErrorKind::System, format!("open {}", path.display()), e)),
            };
            for line in BufReader::new(file).split(b'\n') {
                let mut line = line.map_err(|e| Error::os(ErrorKind::System, format!("read {}", path.display()), e))?;
                if let Some(seq) = line_seq(&line) {
                    // A torn line (from a crash) is skipped.
                    if seq > since && seq < before && is_json(&line) {
                        line.push(b'\n');
                        out.push((seq, line));
                    }
                }
            }
        }
        Ok(out)
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
        let dir = std::env::temp_dir().join(format!("pidvisor-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        let seqs: Vec<u64> = journal.read_since(0, u64::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        assert!(seqs.ends_with(&[19, 20, 21]), "{seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let (_, last) = Journal::open(&dir, 1000).unwrap();
        assert_eq!(last, 21);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_seq_reads_only_whole_prefixes() {
        assert_eq!(line_seq(b"{\"seq\":42,\"type\":1}"), Some(42));
        assert_eq!(line_seq(b"{\"seq\":4"), None);
        assert_eq!(line_seq(b"garbage"), None);
    }
}
