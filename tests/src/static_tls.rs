//! A small TLS echo server in C, linked statically against OpenSSL
//! (`libssl.a`, `libcrypto.a` from libssl-dev; libc stays dynamic), built
//! with gcc in the test's directory: a process that maps no libssl at all,
//! whose `SSL_*` functions live in its own executable.

use crate::cert::TestCert;
use crate::netns::NetPair;
use crate::process::Proc;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The server: `prog IPV4 PORT CERT KEY`; prints `READY` once listening,
/// then for each connection (at most 1000, one at a time) `HANDSHAKE` and
/// an echo until the client closes, or `ERROR n` (n: `SSL_get_error`).
pub const SOURCE: &str = r#"#include <openssl/err.h>
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IPV4 PORT CERT KEY\n", argv[0]);
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[3]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[4], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1 ||
        bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    for (int n = 0; n < 1000; n++) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, c);
        int r = SSL_accept(ssl);
        if (r == 1) {
            char buf[4096];
            printf("HANDSHAKE\n");
            fflush(stdout);
            while ((r = SSL_read(ssl, buf, sizeof buf)) > 0)
                SSL_write(ssl, buf, r);
            SSL_shutdown(ssl);
        } else {
            printf("ERROR %d\n", SSL_get_error(ssl, r));
            fflush(stdout);
        }
        SSL_free(ssl);
        close(c);
    }
    return 0;
}
"#;

/// Builds the server into `dir` with gcc; returns the executable's path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("static_tls_server.c");
    let exe = dir.join("static_tls_server");
    std::fs::write(&src, SOURCE).with_context(|| format!("writing {}", src.display()))?;
    let out = Command::new("gcc")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args([
            "-Wl,-Bstatic",
            "-lssl",
            "-lcrypto",
            "-Wl,-Bdynamic",
            "-lpthread",
            "-ldl",
        ])
        .output()
        .context("running gcc (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "gcc failed ({}; libssl-dev provides libssl.a):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(exe)
}

/// A running statically linked server.
#[derive(Debug)]
pub struct StaticTlsServer {
    /// The process.
    pub proc: Proc,
    /// Its executable.
    pub exe: PathBuf,
}

impl StaticTlsServer {
    /// Starts `exe` (from [`build`]) on `addr` (IPv4) in the server
    /// namespace; waits until it listens.
    pub fn start(
        net: &NetPair,
        dir: &Path,
        cert: &TestCert,
        exe: &Path,
        addr: SocketAddr,
        name: &str,
    ) -> Result<Self> {
        let mut c = net.server_cmd(&exe.to_string_lossy());
        c.arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&cert.cert)
            .arg(&cert.key);
        let mut proc = Proc::spawn(name, c, dir, false)?;
        proc.wait_for("READY", Duration::from_secs(15), |out, _| {
            out.contains("READY")
        })?;
        proc.wait_listening(&net.server_ns, addr, Duration::from_secs(15))?;
        Ok(Self {
            proc,
            exe: exe.to_owned(),
        })
    }
}
