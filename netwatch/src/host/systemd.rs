//! systemd socket activation (`sd_listen_fds(3)`): the listening socket systemd opened and
//! passed as file descriptor 3, named by `LISTEN_PID` (this process) and `LISTEN_FDS`.
use std::{
    io,
    net::TcpListener,
    os::fd::{FromRawFd as _, RawFd},
};

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// The listener systemd passed; an error when none was passed to this process, or it is not
/// a listening TCP socket. The variables are removed so that children do not take it.
pub fn listener() -> io::Result<TcpListener> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    // SAFETY: the variables are removed at start-up, before the runtime starts any thread
    // that reads the environment (`serve` calls this before spawning its tasks; tokio's
    // current-thread runtime and its blocking pool do not read the environment).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let count = passed(pid.as_deref(), fds.as_deref(), std::process::id())
        .map_err(|why| io::Error::new(io::ErrorKind::NotFound, why))?;
    if count > 1 {
        log::warn!("systemd passed {count} sockets; serving on the first");
    }
    check_listening_tcp(SD_LISTEN_FDS_START)?;
    // SAFETY: systemd passed descriptor 3 to this process (LISTEN_PID is ours and LISTEN_FDS
    // at least 1), it is a listening TCP socket (checked above), and nothing else in this
    // process owns it: taking ownership here is the only use.
    let listener = unsafe { TcpListener::from_raw_fd(SD_LISTEN_FDS_START) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// How many sockets systemd passed to process `me`, from `LISTEN_PID` and `LISTEN_FDS`.
fn passed(pid: Option<&str>, fds: Option<&str>, me: u32) -> Result<u32, String> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Err("LISTEN_PID and LISTEN_FDS are not set: was netwatch started by a systemd .socket unit?".into());
    };
    if pid.trim().parse::<u32>().ok() != Some(me) {
        return Err(format!("LISTEN_PID is {pid}, not this process ({me})"));
    }
    match fds.trim().parse::<u32>() {
        Ok(n @ 1..) => Ok(n),
        _ => Err(format!("LISTEN_FDS is {fds:?}: no socket passed")),
    }
}

/// An error unless `fd` is a socket of type SOCK_STREAM that listens.
fn check_listening_tcp(fd: RawFd) -> io::Result<()> {
    let int_opt = |opt: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, a live c_int, and
        // updates `len`; an fd that is not a socket gives ENOTSOCK, not undefined behaviour.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if ret == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let kind = int_opt(libc::SO_TYPE)?;
    let listening = int_opt(libc::SO_ACCEPTCONN)?;
    if kind != libc::SOCK_STREAM || listening == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket systemd passed is not a listening stream socket (ListenStream= in the .socket unit)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_pid_and_fds() {
        assert_eq!(passed(Some("42"), Some("1"), 42), Ok(1));
        assert_eq!(passed(Some("42"), Some("2"), 42), Ok(2));
        assert!(passed(Some("41"), Some("1"), 42).is_err());
        assert!(passed(Some("42"), Some("0"), 42).is_err());
        assert!(passed(None, Some("1"), 42).is_err());
    }

    #[test]
    fn knows_a_listening_socket() {
        use std::os::fd::AsRawFd as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(check_listening_tcp(l.as_raw_fd()).is_ok());
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check_listening_tcp(u.as_raw_fd()).is_err());
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(check_listening_tcp(f.as_raw_fd()).is_err());
    }
}
