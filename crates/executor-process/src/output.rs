//! A task's output, kept so that the log broker can serve it (spec 5.12): the process writes its
//! stdout and stderr into two FIFOs (`<task>.stdout`, `<task>.stderr` next to the log), which it
//! holds open for reading and writing itself, so that it never gets SIGPIPE while no swarmd reads
//! them (across a swarmd restart it blocks once a pipe's 64 KiB buffer is full, and goes on when
//! the adopting controller reads again). swarmd copies each line into `<task>.log` as one record
//! with the time it read it and its stream:
//!
//! ```text
//! <seconds>.<nanoseconds> <tag> <bytes>\n
//! ```
//!
//! where the tag is `O`/`E` for a whole stdout/stderr line (its newline dropped), `o`/`e` for a
//! piece without newline (a line longer than [`MAX_RECORD`] bytes, or the last bytes before the
//! stream ended), and `.` for the end of a stream (the bytes name it: `O` or `E`), written when
//! the process and everything that inherited the stream closed it. Readers ([`Output::read`])
//! follow the file until both ends are there.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use agent::{ExecutorError, LogOptions, LogSink};
use api::LogStream;
use rustix::fs::{FileType, Mode};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Longest record: a longer line is split into pieces of this size.
pub const MAX_RECORD: usize = 16 * 1024;
/// How often a followed log is read again for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The files of one task's output.
#[derive(Debug)]
pub struct Output {
    log: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Whether this process copies the FIFOs already.
    copying: AtomicBool,
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    at: SystemTime,
    stream: LogStream,
    data: Vec<u8>,
}

/// What one line of the log holds.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Record(Record),
    End(LogStream),
}

fn tag_stream(tag: u8) -> Option<(LogStream, bool)> {
    match tag {
        b'O' => Some((LogStream::Stdout, true)),
        b'E' => Some((LogStream::Stderr, true)),
        b'o' => Some((LogStream::Stdout, false)),
        b'e' => Some((LogStream::Stderr, false)),
        _ => None,
    }
}

/// Parses one line of the log (without its newline). A line of another shape (output written
/// before records were) counts as stdout read now.
fn parse(line: &[u8]) -> Line {
    let fallback = || {
        let mut data = line.to_vec();
        data.push(b'\n');
        Line::Record(Record {
            at: SystemTime::now(),
            stream: LogStream::Stdout,
            data,
        })
    };
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (Some(ts), Some(tag), rest) = (parts.next(), parts.next(), parts.next()) else {
        return fallback();
    };
    let at = std::str::from_utf8(ts).ok().and_then(|ts| {
        let (secs, nanos) = ts.split_once('.')?;
        Some(SystemTime::UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?))
    });
    let (Some(at), [tag]) = (at, tag) else {
        return fallback();
    };
    let rest = rest.unwrap_or_default();
    if *tag == b'.' {
        return match rest {
            b"O" => Line::End(LogStream::Stdout),
            b"E" => Line::End(LogStream::Stderr),
            _ => fallback(),
        };
    }
    let Some((stream, whole)) = tag_stream(*tag) else {
        return fallback();
    };
    let mut data = rest.to_vec();
    if whole {
        data.push(b'\n');
    }
    Line::Record(Record { at, stream, data })
}

/// The bytes of one record.
fn encode(at: SystemTime, tag: u8, data: &[u8]) -> Vec<u8> {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = format!("{}.{:09} ", since.as_secs(), since.subsec_nanos()).into_bytes();
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(data);
    out.push(b'\n');
    out
}

impl Output {
    /// The output files of task `task_id` in `dir`.
    pub fn new(dir: &Path, task_id: &str) -> Output {
        Output {
            log: dir.join(format!("{task_id}.log")),
            stdout: dir.join(format!("{task_id}.stdout")),
            stderr: dir.join(format!("{task_id}.stderr")),
            copying: AtomicBool::new(false),
        }
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Creates the log (0600) if missing.
    pub fn create_log(&self) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log)
    }

    /// The FIFOs (made 0600 if missing) opened for the child's stdout and stderr, read and write
    /// (see the module docs), and this process's reading ends, opened first so that nothing
    /// the child writes is lost. Needs a tokio runtime.
    pub fn open_pipes(&self) -> io::Result<((File, File), (pipe::Receiver, pipe::Receiver))> {
        let mut ends = Vec::new();
        for path in [&self.stdout, &self.stderr] {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_fifo() => {}
                Ok(_) => std::fs::remove_file(path)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            match rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            ) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let write = OpenOptions::new().read(true).write(true).open(path)?;
            let read = pipe::OpenOptions::new().open_receiver(path)?;
            ends.push((write, read));
        }
        let (err_w, err_r) = ends.pop().expect("two ends");
        let (out_w, out_r) = ends.pop().expect("two ends");
        Ok(((out_w, err_w), (out_r, err_r)))
    }

    /// Copies the FIFOs into the log from now on (once per controller).
    pub fn copy(&self, readers: (pipe::Receiver, pipe::Receiver)) -> io::Result<()> {
        if self.copying.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let log = Arc::new(self.create_log()?);
        tokio::spawn(copy_stream(readers.0, b'O', log.clone()));
        tokio::spawn(copy_stream(readers.1, b'E', log));
        Ok(())
    }

    /// For a process adopted from an earlier swarmd: copies its FIFOs again, if it has them
    /// (one started before records were written into its log has none). Needs a runtime.
    pub fn resume_copy(&self) -> io::Result<()> {
        if self.copying.load(Ordering::SeqCst) {
            return Ok(());
        }
        let is_fifo =
            |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo());
        if !is_fifo(&self.stdout) || !is_fifo(&self.stderr) {
            return Ok(());
        }
        let out = pipe::OpenOptions::new().open_receiver(&self.stdout)?;
        let err = pipe::OpenOptions::new().open_receiver(&self.stderr)?;
        self.copy((out, err))
    }

    /// Removes the log and the FIFOs.
    pub fn remove(&self) -> io::Result<()> {
        for path in [&self.stdout, &self.stderr, &self.log] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the log's records to `sink` as `options` ask; with follow, until both streams ended.
    pub async fn read(&self, options: &LogOptions, sink: &LogSink) -> Result<(), ExecutorError> {
        let mut offset = 0u64;
        let mut first = true;
        let (mut out_ended, mut err_ended) = (false, false);
        loop {
            let (lines, read) = match read_lines(&self.log, offset) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0),
                Err(e) => {
                    return Err(ExecutorError::Temporary(format!(
                        "reading {}: {e}",
                        self.log.display()
                    )));
                }
            };
            offset += read;
            let mut records = Vec::new();
            for line in lines {
                match line {
                    Line::End(LogStream::Stdout) => out_ended = true,
                    Line::End(_) => err_ended = true,
                    Line::Record(r) if options.wants(r.stream, r.at) => records.push(r),
                    Line::Record(_) => {}
                }
            }
            if first {
                records = options.apply_tail(records);
                first = false;
            }
            for r in records {
                sink.send(r.at, r.stream, r.data).await?;
            }
            if !options.follow || (out_ended && err_ended) {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// The whole lines of `path` from `offset`, and how many bytes they took.
fn read_lines(path: &Path, offset: u64) -> io::Result<(Vec<Line>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = bytes[..whole]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse)
        .collect();
    Ok((lines, whole as u64))
}

/// Copies one FIFO into the log until every writer closed it, then marks its end.
async fn copy_stream(mut reader: pipe::Receiver, tag: u8, log: Arc<File>) {
    let piece = tag.to_ascii_lowercase();
    let write = |bytes: Vec<u8>| {
        if let Err(e) = (&*log).write_all(&bytes) {
            tracing::warn!("writing a task's log failed: {e}");
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let now = SystemTime::now();
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + i];
            for (k, part) in line.chunks(MAX_RECORD).enumerate() {
                let last = (k + 1) * MAX_RECORD >= line.len();
                write(encode(now, if last { tag } else { piece }, part));
            }
            if line.is_empty() {
                write(encode(now, tag, b""));
            }
            start += i + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_RECORD {
            let rest = pending.split_off(MAX_RECORD);
            write(encode(now, piece, &pending));
            pending = rest;
        }
    }
    let now = SystemTime::now();
    if !pending.is_empty() {
        write(encode(now, piece, &pending));
    }
    write(encode(now, b'.', &[tag]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let line = encode(at, b'E', b"a b c");
        assert_eq!(line, b"1700000000.000000123 E a b c\n");
        assert_eq!(
            parse(&line[..line.len() - 1]),
            Line::Record(Record {
                at,
                stream: LogStream::Stderr,
                data: b"a b c\n".to_vec(),
            })
        );
        let piece = encode(at, b'o', b"abc");
        assert_eq!(
            parse(&piece[..piece.len() - 1]),
            Line::Record(Record {
                at,
                stream: LogStream::Stdout,
                data: b"abc".to_vec(),
            })
        );
        let end = encode(at, b'.', b"O");
        assert_eq!(parse(&end[..end.len() - 1]), Line::End(LogStream::Stdout));
        // Output from before records: stdout, whole.
        let Line::Record(old) = parse(b"plain output") else {
            panic!("a record");
        };
        assert_eq!(old.data, b"plain output\n");
    }
}
