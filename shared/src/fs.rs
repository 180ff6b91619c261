//! Files and directories that hold secrets or usage: created readable by
//! this user alone (directories 0700, files 0600).
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) 0700; an existing one is narrowed to
/// 0700 when it is open to others and ours to change.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        {
            tracing::warn!(path = %dir.display(), error = %e, "cannot narrow the directory's permissions to 0700");
        }
    }
    Ok(())
}

/// Options that create a file 0600 (an existing file keeps its mode).
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `path` empty with mode 0600 unless it exists, so a program that
/// opens it next (SQLite) keeps that mode, and its side files with it.
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    match private_file_options()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending, creating it 0600.
pub fn append_private(path: &Path) -> io::Result<File> {
    private_file_options().create(true).append(true).open(path)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an open directory is narrowed");
        let db = dir.join("x.db");
        ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        ensure_private_file(&db).unwrap();
        let log = dir.join("y.log");
        append_private(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
    }
}
