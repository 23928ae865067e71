//! The control server: HTTP/JSON on a Unix socket (the routes of
//! [`crate::agent::publish::routes`], one file per resource), the
//! socket file's life cycle, and who may use it: the file is mode 0660,
//! group [`DEFAULT_SOCKET_GROUP`] (`--socket-group`) when that group exists,
//! and every request's peer credentials (`SO_PEERCRED`) are checked: root,
//! the agent's own user and members of that group are served, anyone else
//! gets 403 with an explanation. Connections are accepted and bounded by
//! [`crate::agent::publish::accept`].

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::{UnixListener, UnixStream};

use super::accept::{self, Limits};

use crate::agent::publish::routes::{self, Failure};
use crate::agent::publish::view::View;

/// Who may use the control socket besides root and the agent's own user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The group's name (for messages).
    pub group: String,
    /// Its id, when the group exists.
    pub gid: Option<u32>,
    /// The agent's effective uid.
    pub own_uid: u32,
}

impl Access {
    /// Whether a peer with `uid`, primary `gid` and supplementary `groups`
    /// may use the API.
    pub fn allows(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0 || uid == self.own_uid || self.gid.is_some_and(|g| gid == g || groups.contains(&g))
    }

    /// The refusal a peer gets.
    pub fn refusal(&self, uid: u32, gid: u32) -> String {
        let group = match self.gid {
            Some(g) => format!("group {} (gid {g})", self.group),
            None => format!("group {} (which does not exist on this host)", self.group),
        };
        format!(
            "permission denied: uid {uid} (gid {gid}) may not use the hsmon control socket; only root and members of {group} may"
        )
    }
}

/// The gid of group `name`, if it exists.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and
    // its length is passed; `result` is only read after the call.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(grp.gr_gid)
}

/// The supplementary groups of process `pid` (`Groups:` in
/// `/proc/PID/status`); empty when it cannot be read.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The control socket's listener and the access rule it enforces.
pub struct Listener {
    listener: UnixListener,
    access: Access,
    limits: Limits,
}

/// A request's peer, from `SO_PEERCRED` at accept.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

/// `SO_PEERCRED` of an accepted connection (`None` if it cannot be read:
/// such a peer is refused).
#[derive(Clone, Copy, Debug)]
pub struct PeerInfo(Option<Peer>);

impl PeerInfo {
    /// The credentials of the peer of `stream`.
    pub fn of(stream: &UnixStream) -> Self {
        PeerInfo(stream.peer_cred().ok().map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        }))
    }
}

/// Refuses requests from peers [`Access`] does not allow (403, JSON error).
async fn check_peer(
    State(access): State<Arc<Access>>,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    req: Request,
    next: Next,
) -> Response {
    let Some(peer) = peer else {
        return Failure::new(
            StatusCode::FORBIDDEN,
            "permission denied: the peer's credentials cannot be read",
        )
        .into_response();
    };
    let groups = peer.pid.map(supplementary_groups).unwrap_or_default();
    if access.allows(peer.uid, peer.gid, &groups) {
        return next.run(req).await;
    }
    let msg = access.refusal(peer.uid, peer.gid);
    tracing::debug!(uid = peer.uid, pid = ?peer.pid, "refused peer");
    Failure::new(StatusCode::FORBIDDEN, msg).into_response()
}

/// The socket file this agent created; removed when dropped (only if it is
/// still the same file, not one a later agent put there).
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.ino() == self.ino => match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::info!("removed {}", self.path.display()),
                Err(e) => tracing::warn!("removing {}: {e}", self.path.display()),
            },
            _ => {}
        }
    }
}

/// Binds the control socket at `path`: creates its directory, replaces a stale
/// socket file (refusing if an agent still answers there), sets mode 0660 and
/// group `group` when it exists. Raises the open-file limit
/// ([`accept::raise_nofile`]) and fits the connection limits to it.
pub fn bind(path: &Path, group: &str) -> Result<(Listener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another agent is already listening on {} (stop it, or pick another --socket)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            tracing::info!("removed the stale socket {}", path.display());
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    let file = SocketFile {
        path: path.to_owned(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    let gid = group_id(group);
    match gid {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
                format!("giving {} to group {group} (gid {gid})", path.display())
            })?;
            tracing::info!(socket = %path.display(), group, gid, "control socket: mode 0660, root and group {group}");
        }
        None => tracing::info!(
            socket = %path.display(),
            "control socket: mode 0660; group {group} does not exist, so only root may use it"
        ),
    }
    let access = Access {
        group: group.to_owned(),
        gid,
        // SAFETY: geteuid has no preconditions and cannot fail.
        own_uid: unsafe { libc::geteuid() },
    };
    let limits = Limits::default().fit(accept::raise_nofile());
    Ok((
        Listener {
            listener,
            access,
            limits,
        },
        file,
    ))
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: Listener,
    view: Arc<View>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let access = Arc::new(listener.access);
    let app = routes::router(view).layer(axum::middleware::from_fn_with_state(access, check_peer));
    accept::run(listener.listener, app, listener.limits, shutdown)
        .await
        .context("serving the control API")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rule() {
        let a = Access {
            group: "hsmon".into(),
            gid: Some(990),
            own_uid: 0,
        };
        assert!(a.allows(0, 0, &[]));
        assert!(a.allows(1000, 990, &[]));
        assert!(a.allows(1000, 1000, &[4, 990]));
        assert!(!a.allows(65534, 65534, &[]));
        let no_group = Access {
            gid: None,
            ..a.clone()
        };
        assert!(!no_group.allows(1000, 990, &[990]));
        assert!(no_group.allows(0, 5, &[]));
        let own = Access {
            own_uid: 1000,
            ..no_group
        };
        assert!(own.allows(1000, 1000, &[]));
        assert!(a
            .refusal(65534, 65534)
            .contains("only root and members of group hsmon"));
    }

    #[test]
    fn groups_of_this_process_are_read() {
        let own = supplementary_groups(std::process::id() as i32);
        // Whatever they are, reading them does not fail silently into garbage.
        assert!(own.len() < 65_536);
        assert!(group_id("hsmon-no-such-group-xyz").is_none());
        assert_eq!(group_id("root"), Some(0));
    }
}
