//! The embedded store (`quality.store = "file:DIR"`): JSON lines in numbered files in DIR,
//! `labels-NNNNNNNNNN.jsonl`, one [`LabelRow`] a line.
//!
//! Durability: a batch is written with one `write_all` and `fdatasync`ed before it is
//! acknowledged; a new file's directory entry is `fsync`ed when the file is created. A crash
//! can therefore only leave the last line of the file being written torn (no newline, or part
//! of a row): readers skip such a line and count it ([`ReadRows::torn`]).
//!
//! Restarts and failures: a store opened on a directory never appends to a file it did not
//! create — it starts the next number, created exclusively, so a torn tail is never glued to a
//! new row and two processes cannot share a file. After a failed write the file is left and
//! the next batch starts a new one.
//!
//! Rotation at [`ROTATE_BYTES`]: a row is about 1 KB (21 named features and the request's
//! metadata), so a file holds some 60,000 rows, a day of a busy replica's duels and feedback;
//! each file is a unit an operator can copy or delete by age, and `train` reads them in order.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use prompt_router_core::quality::label::LabelRow;

use super::{LabelStore, ReadRows};

/// Size past which the next batch goes to a new file (see the module docs).
pub const ROTATE_BYTES: u64 = 64 << 20;

const PREFIX: &str = "labels-";
const SUFFIX: &str = ".jsonl";

/// A directory of rotated JSON-lines files.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    rotate_bytes: u64,
    current: Option<Current>,
}

#[derive(Debug)]
struct Current {
    file: File,
    number: u64,
    bytes: u64,
}

impl FileStore {
    /// A store in `dir` (created if missing), rotating at [`ROTATE_BYTES`].
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::with_rotation(dir, ROTATE_BYTES)
    }

    /// A store in `dir` rotating at `rotate_bytes` (tests use small files).
    pub fn with_rotation(dir: &Path, rotate_bytes: u64) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            rotate_bytes,
            current: None,
        })
    }

    /// The store's files in order.
    pub fn files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(number) = number {
                files.push((number, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    fn file_name(dir: &Path, number: u64) -> PathBuf {
        dir.join(format!("{PREFIX}{number:010}{SUFFIX}"))
    }

    /// Every row in `dir`, in file and line order.
    pub fn read_dir(dir: &Path) -> anyhow::Result<ReadRows> {
        let mut out = ReadRows::default();
        for (_, path) in Self::files(dir)? {
            read_file(&path, &mut out)?;
        }
        Ok(out)
    }
}

/// Appends `path`'s rows to `out`: a last line without its newline is torn (counted and
/// skipped); any other line that is not a row is an error naming file and line.
fn read_file(path: &Path, out: &mut ReadRows) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            out.torn += 1;
            break;
        }
        let row = serde_json::from_slice::<LabelRow>(&line)
            .with_context(|| format!("{}: line {n} is not a label row", path.display()))?;
        out.rows.push(row);
    }
    Ok(())
}

/// Opens the next numbered file in `dir`, exclusively, and makes its name durable.
fn next_file(dir: &Path) -> anyhow::Result<Current> {
    let mut number = FileStore::files(dir)?.last().map_or(0, |(n, _)| n + 1);
    loop {
        let path = FileStore::file_name(dir, number);
        match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(file) => {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("syncing {}", dir.display()))?;
                return Ok(Current {
                    file,
                    number,
                    bytes: 0,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
}

/// Writes `buf` (whole lines) to `current`, or to a new file when there is none or it is full,
/// and syncs it; the file to go on with, `None` after a failure.
fn write_batch(
    dir: &Path,
    rotate_bytes: u64,
    current: Option<Current>,
    buf: &[u8],
) -> (Option<Current>, anyhow::Result<()>) {
    let mut current = match current {
        Some(c) if c.bytes < rotate_bytes => c,
        _ => match next_file(dir) {
            Ok(c) => c,
            Err(e) => return (None, Err(e)),
        },
    };
    match current
        .file
        .write_all(buf)
        .and_then(|()| current.file.sync_data())
    {
        Ok(()) => {
            current.bytes += buf.len() as u64;
            (Some(current), Ok(()))
        }
        // What reached the file may end in part of a row: the next batch starts a file.
        Err(e) => {
            let path = FileStore::file_name(dir, current.number);
            (
                None,
                Err(e).with_context(|| format!("writing {}", path.display())),
            )
        }
    }
}

impl LabelStore for FileStore {
    async fn append(&mut self, rows: &[LabelRow]) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 1024);
        for row in rows {
            serde_json::to_writer(&mut buf, row).context("encoding a label row")?;
            buf.push(b'\n');
        }
        let (dir, rotate, current) = (self.dir.clone(), self.rotate_bytes, self.current.take());
        let (current, result) =
            tokio::task::spawn_blocking(move || write_batch(&dir, rotate, current, &buf))
                .await
                .context("the label file writer panicked")?;
        self.current = current;
        result
    }

    async fn read_all(&mut self) -> anyhow::Result<ReadRows> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::read_dir(&dir))
            .await
            .context("the label file reader panicked")?
    }

    async fn check(&mut self) -> anyhow::Result<()> {
        let meta = fs::metadata(&self.dir).with_context(|| format!("{}", self.dir.display()))?;
        anyhow::ensure!(meta.is_dir(), "{} is not a directory", self.dir.display());
        Ok(())
    }
}
