//! The tailer's resume point on disk: which server, which binlog position or LSN. Written only after
//! the sink has acknowledged every change before that position, durably (temp file, fsync,
//! rename, fsync of the directory), so a crash at any moment leaves either the old or the new
//! checkpoint, and both are safe places to resume from (the old one re-sends a little).

use crate::position::{BinlogPosition, ResumePoint, format_lsn, parse_lsn};
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &str = "herald-tail checkpoint v1";

/// A resume point and the server it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identity of the database server the position belongs to (see
    /// `mysql::preflight::ServerFacts::identity`); another identity means the position is
    /// meaningless there and the tailer reloads.
    pub server: String,
    /// Where to resume: every change before it has been acknowledged by the sink.
    pub position: ResumePoint,
}

impl Checkpoint {
    /// Reads the checkpoint at `path`; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::parse(&text)
            .with_context(|| format!("{} is not a herald-tail checkpoint", path.display()))
            .map(Some)
    }

    fn parse(text: &str) -> anyhow::Result<Checkpoint> {
        let mut lines = text.lines();
        anyhow::ensure!(lines.next() == Some(MAGIC), "missing {MAGIC:?} header");
        let (mut server, mut file, mut pos, mut lsn) = (None, None, None, None);
        for line in lines {
            match line.split_once('=') {
                Some(("server", v)) => server = Some(v.to_owned()),
                Some(("file", v)) => file = Some(v.to_owned()),
                Some(("pos", v)) => pos = Some(v.parse::<u64>().context("pos")?),
                Some(("lsn", v)) => lsn = Some(parse_lsn(v).context("lsn")?),
                _ => {}
            }
        }
        let position = match lsn {
            Some(lsn) => ResumePoint::Lsn(lsn),
            None => ResumePoint::Binlog(BinlogPosition::new(
                file.context("no file= (or lsn=) line")?,
                pos.context("no pos= line")?,
            )),
        };
        Ok(Checkpoint {
            server: server.context("no server= line")?,
            position,
        })
    }

    /// Stores the checkpoint durably at `path`.
    pub fn store(&self, path: &Path) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension("tmp");
        let text = match &self.position {
            ResumePoint::Binlog(p) => {
                format!(
                    "{MAGIC}\nserver={}\nfile={}\npos={}\n",
                    self.server, p.file, p.pos
                )
            }
            ResumePoint::Lsn(lsn) => {
                format!(
                    "{MAGIC}\nserver={}\nlsn={}\n",
                    self.server,
                    format_lsn(*lsn)
                )
            }
        };
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tail.checkpoint");
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
        let cp = Checkpoint {
            server: "mariadb server_id=1".into(),
            position: ResumePoint::Binlog(BinlogPosition::new("mb.000003", 1234)),
        };
        cp.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(cp));
        let pg = Checkpoint {
            server: "postgres system_id=7 db=meta".into(),
            position: ResumePoint::Lsn(0x1_2345_6789),
        };
        pg.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(pg));
        std::fs::write(&path, "garbage").unwrap();
        assert!(Checkpoint::load(&path).is_err());
    }
}
