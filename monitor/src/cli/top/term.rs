//! The terminal side of interactive `hsmon top`: raw keyboard input (no
//! echo, no line buffering, no signals from keys), the alternate screen,
//! the window size, and putting everything back when dropped (also when
//! unwinding from a panic).

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal's (columns, rows), or 80x24 when it cannot be read.
pub fn size() -> (usize, usize) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which is valid.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc != 0 || ws.ws_col == 0 || ws.ws_row == 0 {
        return (80, 24);
    }
    (usize::from(ws.ws_col), usize::from(ws.ws_row))
}

/// Raw mode on stdin and the alternate screen on stdout, until dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches the terminal over.
    pub fn enter() -> Result<Self> {
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr fills `saved`, a valid termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the terminal's settings");
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("switching the terminal to raw mode");
        }
        let term = RawTerminal { saved };
        // Alternate screen, cursor hidden.
        let mut out = std::io::stdout().lock();
        out.write_all(b"\x1b[?1049h\x1b[?25l")
            .and_then(|()| out.flush())
            .context("writing to the terminal")?;
        Ok(term)
    }

    /// Replaces the screen with `text`.
    pub fn draw(&self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        // Output post-processing stays on: the terminal turns \n into \r\n.
        let mut buf = String::from("\x1b[H\x1b[2J");
        buf.push_str(text);
        out.write_all(buf.as_bytes())
            .and_then(|()| out.flush())
            .context("writing to the terminal")
    }

    /// Waits up to `timeout` for a key; returns it, if one came.
    pub fn key(&self, timeout: Duration) -> Option<u8> {
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        if n <= 0 {
            return None;
        }
        let mut b = [0u8; 1];
        // SAFETY: reads at most one byte into `b`.
        let r = unsafe { libc::read(libc::STDIN_FILENO, b.as_mut_ptr().cast(), 1) };
        (r == 1).then_some(b[0])
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
