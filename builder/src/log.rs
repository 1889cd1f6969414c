//! Build logs: `$GUIX_LOG_DIRECTORY/drvs/XX/REST[.gz|.bz2]`, as the C++ daemon writes them.
//!
//! `XX` is the first two characters of the derivation's base name, `REST` the others. The file
//! is created (truncated) with mode 0666 under the daemon's umask 022, so 0644; gzip at level 9,
//! bzip2 with block size 9 (`--log-compression`); none with `--lose-logs`. Every byte the builder
//! writes goes to it. [`BuildLog::trace_path`] is the name the `@ build-started` trace prints,
//! with the C++ daemon's doubled slash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use guix_formats::StorePath;
use guix_ipc::config::LogCompression;

use crate::error::{IoContext, Result};

enum Sink {
    Plain(File),
    Gzip(flate2::write::GzEncoder<File>),
    Bzip2(bzip2::write::BzEncoder<File>),
}

/// One build's log file, or none (`--lose-logs`).
pub struct BuildLog {
    sink: Option<Sink>,
    path: Option<PathBuf>,
    trace_path: String,
}

impl BuildLog {
    /// Creates the log of `drv` under `log_dir` (with its `drvs/XX` directory).
    pub fn create(log_dir: &Path, drv: &StorePath, compression: LogCompression, keep: bool) -> Result<BuildLog> {
        if !keep {
            return Ok(BuildLog { sink: None, path: None, trace_path: String::new() });
        }
        let base = drv.base_name();
        let (dir_name, rest) = base.split_at(2.min(base.len()));
        let ext = match compression {
            LogCompression::None => "",
            LogCompression::Gzip => ".gz",
            LogCompression::Bzip2 => ".bz2",
        };
        let dir = log_dir.join("drvs").join(dir_name);
        fs::create_dir_all(&dir).context(|| format!("creating directory `{}'", dir.display()))?;
        let path = dir.join(format!("{rest}{ext}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .open(&path)
            .context(|| format!("creating log file `{}'", path.display()))?;
        let sink = match compression {
            LogCompression::None => Sink::Plain(file),
            LogCompression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(file, flate2::Compression::best())),
            LogCompression::Bzip2 => Sink::Bzip2(bzip2::write::BzEncoder::new(file, bzip2::Compression::best())),
        };
        // C++ builds the name as `logDir + "/drvs/" + XX + "/" + REST` from a log dir ending in
        // a slash it added itself, so the trace shows `drvs/XX//REST`.
        let trace_path = format!("{}/drvs/{dir_name}//{rest}{ext}", log_dir.display());
        Ok(BuildLog { sink: Some(sink), path: Some(path), trace_path })
    }

    /// The file's name, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The name as the `@ build-started` trace shows it (empty without a log).
    pub fn trace_path(&self) -> &str {
        &self.trace_path
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            None => Ok(()),
            Some(Sink::Plain(f)) => f.write_all(bytes),
            Some(Sink::Gzip(z)) => z.write_all(bytes),
            Some(Sink::Bzip2(z)) => z.write_all(bytes),
        }
    }

    /// Flushes and closes the file (the compressed stream's trailer is written here).
    pub fn finish(mut self) -> io::Result<()> {
        match self.sink.take() {
            None => Ok(()),
            Some(Sink::Plain(mut f)) => f.flush(),
            Some(Sink::Gzip(z)) => z.finish().map(drop),
            Some(Sink::Bzip2(z)) => z.finish().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::StoreDir;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn drv() -> StorePath {
        StoreDir::default().parse("/gnu/store/xzrzzhpfx2rq0g9gkpb3b1b3ylj9gb1s-probe-normal.drv").unwrap()
    }

    fn read_back(path: &Path, compression: LogCompression) -> Vec<u8> {
        let f = File::open(path).unwrap();
        let mut out = Vec::new();
        match compression {
            LogCompression::None => {
                let mut f = f;
                f.read_to_end(&mut out).unwrap();
            }
            LogCompression::Gzip => {
                flate2::read::GzDecoder::new(f).read_to_end(&mut out).unwrap();
            }
            LogCompression::Bzip2 => {
                bzip2::read::BzDecoder::new(f).read_to_end(&mut out).unwrap();
            }
        }
        out
    }

    #[test]
    fn names_modes_and_contents_per_compression() {
        let dir = tempfile::tempdir().unwrap();
        for (c, ext) in [(LogCompression::None, ""), (LogCompression::Gzip, ".gz"), (LogCompression::Bzip2, ".bz2")] {
            let mut log = BuildLog::create(dir.path(), &drv(), c, true).unwrap();
            let path = log.path().unwrap().to_owned();
            assert_eq!(path, dir.path().join(format!("drvs/xz/rzzhpfx2rq0g9gkpb3b1b3ylj9gb1s-probe-normal.drv{ext}")));
            assert_eq!(
                log.trace_path(),
                format!("{}/drvs/xz//rzzhpfx2rq0g9gkpb3b1b3ylj9gb1s-probe-normal.drv{ext}", dir.path().display())
            );
            log.write(b"hello\n").unwrap();
            log.write(b"world\n").unwrap();
            log.finish().unwrap();
            assert_eq!(read_back(&path, c), b"hello\nworld\n");
            // 0666 under the umask (the daemon's is 022).
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & !0o022, mode, "mode {mode:o}");
        }
    }

    #[test]
    fn lose_logs_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BuildLog::create(dir.path(), &drv(), LogCompression::Gzip, false).unwrap();
        log.write(b"x").unwrap();
        assert!(log.path().is_none() && log.trace_path().is_empty());
        log.finish().unwrap();
        assert!(!dir.path().join("drvs").exists());
    }
}
