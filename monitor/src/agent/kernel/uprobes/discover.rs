//! Which files to probe: the system's default libssl, every `libssl*.so*`
//! a running process maps, and every running executable that carries
//! OpenSSL statically (a defined `SSL_do_handshake` in its ELF symbol
//! table). Files are identified by (device, inode), never by path, and
//! opened through `/proc/PID/root` so files inside containers are found.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The system's default libssl on Debian/Ubuntu x86_64.
pub const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

/// The symbol whose definition marks an executable as carrying OpenSSL.
const MARKER_SYMBOL: &str = "SSL_do_handshake";

/// Executables bigger than this are not inspected for a static OpenSSL.
const MAX_EXE_BYTES: u64 = 1 << 30;

/// A file's identity: (device, inode).
pub type FileId = (u64, u64);

/// One file to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its (device, inode).
    pub id: FileId,
    /// The path to attach through (`/proc/PID/root/...` for files of other
    /// processes, valid while that process lives).
    pub attach_path: PathBuf,
    /// The path as `hsmon conns` shows it: the path inside the process's
    /// root, prefixed with `/proc/PID/root` when that root is not ours.
    pub display: String,
    /// A shared library (`libssl*.so*`) rather than an executable.
    pub library: bool,
}

/// What the previous scans learnt about executables, by (device, inode):
/// whether each carries OpenSSL. Parsing an ELF file once per inode is
/// enough.
#[derive(Debug, Default)]
pub struct ExeVerdicts(HashMap<FileId, bool>);

impl ExeVerdicts {
    /// Executables inspected so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Every target on the host now, the system libssl first, deduplicated by
/// (device, inode).
pub fn scan(verdicts: &mut ExeVerdicts) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let push = |t: Target, out: &mut Vec<Target>| {
        if !out.iter().any(|o| o.id == t.id) {
            out.push(t);
        }
    };
    for path in default_libssl() {
        if let Some(id) = file_id(&path) {
            let display = path.display().to_string();
            push(
                Target {
                    id,
                    attach_path: path,
                    display,
                    library: true,
                },
                &mut out,
            );
        }
    }
    let own_root = file_id(Path::new("/"));
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        for t in process_targets(pid, own_root, verdicts) {
            push(t, &mut out);
        }
    }
    out
}

/// The files `paths` names (`--uprobe-target`), as targets; files that
/// cannot be stat'ed are skipped with a warning.
pub fn named(paths: &[PathBuf]) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) => {
                let id = (m.dev(), m.ino());
                if !out.iter().any(|t| t.id == id) {
                    out.push(Target {
                        id,
                        attach_path: p.clone(),
                        display: p.display().to_string(),
                        library: p.to_string_lossy().contains(".so"),
                    });
                }
            }
            Err(e) => tracing::warn!("--uprobe-target {}: {e}", p.display()),
        }
    }
    out
}

/// The targets of one process: the libssl files it maps and, when it
/// carries OpenSSL statically, its executable.
fn process_targets(pid: &str, own_root: Option<FileId>, verdicts: &mut ExeVerdicts) -> Vec<Target> {
    let mut out = Vec::new();
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return out; // gone, or a kernel thread
    };
    let root = format!("/proc/{pid}/root");
    let same_root = own_root.is_some() && file_id(Path::new(&root)) == own_root;
    let root_link = std::fs::read_link(&root)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let shown = |printed: &str| {
        let inner = inside_root(printed, root_link.as_deref());
        if same_root {
            inner.to_owned()
        } else {
            format!("{root}{inner}")
        }
    };
    for inner in libssl_paths_in_maps(&maps) {
        // Through `map_files` (a magic link to the mapped file) when the
        // joined path names no file: see the executable case below.
        let joined = PathBuf::from(format!("{root}{inner}"));
        let attach_path = if joined.exists() {
            joined
        } else {
            match map_range_of(&maps, &inner) {
                Some(range) => PathBuf::from(format!("/proc/{pid}/map_files/{range}")),
                None => joined,
            }
        };
        if let Some(id) = file_id(&attach_path) {
            out.push(Target {
                id,
                display: shown(&inner),
                attach_path,
                library: true,
            });
        }
    }
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let Some(id) = file_id(&exe) else {
        return out;
    };
    let carries = *verdicts
        .0
        .entry(id)
        .or_insert_with(|| carries_openssl(&exe));
    if carries {
        if let Ok(inner) = std::fs::read_link(&exe) {
            let inner = inner.to_string_lossy();
            let inner = inner
                .strip_suffix(" (deleted)")
                .unwrap_or(&inner)
                .to_owned();
            // Attach through the magic link, not `{root}{inner}`: when the
            // process lives in another mount namespace whose root we cannot
            // reach (e.g. agent under `ip netns exec` inside a chroot), the
            // kernel prints `inner` from that namespace's root, so the joined
            // path names no file.
            out.push(Target {
                id,
                display: shown(&inner),
                attach_path: exe.clone(),
                library: false,
            });
        }
    }
    out
}

/// A path the kernel printed for a process's mapping or executable, as the
/// process itself names it. The kernel prints paths from the reader's root
/// when it can reach the file from there, else from the root of the mount
/// namespace the file's mount belongs to: a process chrooted under
/// `root_link` (what `/proc/PID/root` reads as) in another mount namespace
/// (e.g. under `ip netns exec` inside a chroot) then shows
/// `ROOT_LINK/tmp/x` for its `/tmp/x`. `root_link` is stripped when it is
/// a proper directory prefix of `printed`.
fn inside_root<'a>(printed: &'a str, root_link: Option<&str>) -> &'a str {
    match root_link {
        Some(r) if r != "/" && !r.is_empty() => match printed.strip_prefix(r) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => printed,
        },
        _ => printed,
    }
}

/// The system's default libssl: [`SYSTEM_LIBSSL`], or what `ldconfig -p`
/// names when that file is missing.
fn default_libssl() -> Vec<PathBuf> {
    if Path::new(SYSTEM_LIBSSL).exists() {
        return vec![PathBuf::from(SYSTEM_LIBSSL)];
    }
    match std::process::Command::new("ldconfig").arg("-p").output() {
        Ok(out) => parse_ldconfig(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            tracing::debug!("ldconfig -p: {e}");
            Vec::new()
        }
    }
}

/// (device, inode) of `path` (following symlinks); `None` when it cannot be
/// stat'ed.
pub fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Paths of the `libssl.so*` lines of `ldconfig -p` output.
fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if !l.starts_with("libssl.so") {
                return None;
            }
            l.rsplit_once("=> ").map(|(_, p)| PathBuf::from(p.trim()))
        })
        .collect()
}

/// The distinct `libssl*.so*` paths in one `/proc/PID/maps` text.
fn libssl_paths_in_maps(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        if !line.contains("libssl") {
            continue;
        }
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        if path.starts_with('/')
            && file.starts_with("libssl")
            && file.contains(".so")
            && !out.iter().any(|p| p == path)
        {
            out.push(path.to_owned());
        }
    }
    out
}

/// The address range (`start-end`, as `/proc/PID/map_files` names it) of the
/// first mapping of `path` in `maps`.
fn map_range_of<'a>(maps: &'a str, path: &str) -> Option<&'a str> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        (fields.nth(4)? == path).then_some(range)
    })
}

/// Whether the ELF file at `path` defines [`MARKER_SYMBOL`] in its symbol
/// table or dynamic symbol table (an import does not count). Anything
/// unreadable, too big or not ELF: no.
pub fn carries_openssl(path: &Path) -> bool {
    match elf_defines(path, MARKER_SYMBOL) {
        Ok(yes) => yes,
        Err(e) => {
            tracing::trace!("{}: {e:#}", path.display());
            false
        }
    }
}

/// Whether the ELF file at `path` defines `symbol`.
fn elf_defines(path: &Path, symbol: &str) -> anyhow::Result<bool> {
    use object::{Object as _, ObjectSymbol as _};
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > MAX_EXE_BYTES {
        return Ok(false);
    }
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache)?;
    let defined = |s: object::Symbol<'_, '_, _>| {
        !s.is_undefined() && s.name_bytes().is_ok_and(|n| n == symbol.as_bytes())
    };
    Ok(obj.symbols().any(defined) || obj.dynamic_symbols().any(defined))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldconfig_lines() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\
            \tlibssl.so.3 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
            \tlibssl3.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libssl3.so\n\
            \tlibcrypto.so.3 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n";
        assert_eq!(
            parse_ldconfig(text),
            vec![PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3")]
        );
    }

    #[test]
    fn maps_lines() {
        let maps = "\
7f00-7f01 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f02-7f03 r--p 00000000 fe:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f03-7f04 rw-p 00000000 00:00 0
7f04-7f05 r--p 00000000 fe:01 125 /opt/app/lib/libssl.so.1.1 (deleted)
";
        assert_eq!(
            libssl_paths_in_maps(maps),
            vec![
                "/usr/lib/x86_64-linux-gnu/libssl.so.3".to_owned(),
                "/opt/app/lib/libssl.so.1.1".to_owned()
            ]
        );
    }

    /// Paths printed from another mount namespace's root lose the
    /// process's root prefix; others are left alone.
    #[test]
    fn paths_inside_the_process_root() {
        let root = Some("/srv/fresh/root");
        assert_eq!(inside_root("/srv/fresh/root/tmp/x.so", root), "/tmp/x.so");
        assert_eq!(
            inside_root("/srv/fresh/rootfs/x.so", root),
            "/srv/fresh/rootfs/x.so"
        );
        assert_eq!(
            inside_root("/usr/lib/libssl.so.3", root),
            "/usr/lib/libssl.so.3"
        );
        assert_eq!(
            inside_root("/usr/lib/libssl.so.3", Some("/")),
            "/usr/lib/libssl.so.3"
        );
        assert_eq!(
            inside_root("/usr/lib/libssl.so.3", None),
            "/usr/lib/libssl.so.3"
        );
    }

    /// `map_files` names a mapping by its address range.
    #[test]
    fn map_range_of_a_path() {
        let maps = "\
7f00-7f01 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
";
        assert_eq!(
            map_range_of(maps, "/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            Some("7f00-7f01")
        );
        assert_eq!(map_range_of(maps, "/usr/lib/libssl.so.1.1"), None);
    }

    /// The libssl defines the marker; a program that only imports it (the
    /// test binary itself imports nothing of OpenSSL) does not.
    #[test]
    fn elf_marker_symbol() {
        if Path::new(SYSTEM_LIBSSL).exists() {
            assert!(carries_openssl(Path::new(SYSTEM_LIBSSL)));
        }
        if let Ok(exe) = std::env::current_exe() {
            assert!(!carries_openssl(&exe));
        }
        assert!(!carries_openssl(Path::new("/etc/hostname")));
        assert!(!carries_openssl(Path::new("/nonexistent/hsmon")));
    }

    #[test]
    fn own_processes_are_scanned() {
        let mut v = ExeVerdicts::default();
        let targets = scan(&mut v);
        assert!(v.len() > 0, "at least this test's executable was inspected");
        if Path::new(SYSTEM_LIBSSL).exists() {
            assert_eq!(targets[0].display, SYSTEM_LIBSSL);
            assert!(targets[0].library);
        }
        let mut ids: Vec<_> = targets.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), targets.len(), "one target per inode");
    }
}
