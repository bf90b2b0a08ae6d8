//! The local store's filesystem work: durable writes (fsynced file, link or rename, fsynced
//! directories) and listings.

use super::{Created, Listed, STAGING_DIR};
use std::io;
use std::path::{Path, PathBuf};

/// The files under `root/prefix`, recursively, with keys relative to `root`.
pub(super) fn list_local(root: &Path, prefix: &str) -> io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join(prefix)];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if meta.is_dir() {
                dirs.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(Listed {
                    key: rel.to_string_lossy().into_owned(),
                    modified: meta.modified()?.into(),
                    size: meta.len(),
                });
            }
        }
    }
    Ok(out)
}

/// Writes `rel` under `root`: the bytes go to a fsynced file in staging first, then are linked
/// (create: fails if the name exists) or renamed (replace) into place, and the directory synced.
pub(super) fn local_write(
    root: &Path,
    rel: &str,
    bytes: &[u8],
    replace: bool,
) -> io::Result<Created> {
    use std::io::Write;
    let to = root.join(rel);
    let dir = to
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.to_path_buf());
    let tmp = root
        .join(STAGING_DIR)
        .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    create_dir_durably(&root.join(STAGING_DIR))?;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        create_dir_durably(&dir)?;
        if replace {
            std::fs::rename(&tmp, &to)?;
            Ok(Created::New)
        } else {
            match std::fs::hard_link(&tmp, &to) {
                Ok(()) => Ok(Created::New),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::Existed),
                Err(e) => Err(e),
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let created = written?;
    if created == Created::New {
        fsync_dir(&dir)?;
    }
    Ok(created)
}

/// Creates `dir` and any missing parents, and fsyncs the parent of each directory it created:
/// a new `date=` directory is an entry in its parent, and until the parent is synced an OS
/// crash can lose the directory (and every file linked into it) while the ledger says
/// published. Returns the directories it created, outermost first.
pub fn create_dir_durably(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    missing.reverse();
    std::fs::create_dir_all(dir)?;
    for created in &missing {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(missing)
}

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
