//! The fetch server's protocol on its unix socket.
//!
//! One request per connection. The client sends one JSON line ([`Request`]); the server
//! answers with one JSON line ([`Reply`]). A [`Reply::Ready`] carries, as `SCM_RIGHTS`
//! ancillary data on the same `sendmsg` (unix(7)), an open read-only descriptor of the
//! verified file; the client copies it to `%p` itself, so the file is written by
//! PostgreSQL's OS user whatever user runs the server, and no path has to be shared.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Version of the protocol; a server answers a request of another version with
/// [`Reply::Unavailable`], and the client goes on without it.
pub const VERSION: u32 = 1;

/// Longest line accepted either way, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// What `pgagent fetch` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// [`VERSION`].
    pub version: u32,
    /// `%f`: the file name PostgreSQL asks for.
    pub file: String,
    /// The client's `store.url`: a server of another store must not answer.
    pub store: String,
    /// The client's `fetch.timeout` in milliseconds: how long the server retries transient
    /// store errors for this request before answering [`Reply::Abort`].
    pub timeout_ms: u64,
    /// `%p` as an absolute path: a server running as the client's user may move the
    /// verified file there itself (a rename, no copy) and answer [`Reply::Placed`].
    #[serde(default)]
    pub path: Option<String>,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The verified file is attached as a descriptor; copy exactly `len` bytes from offset 0.
    Ready {
        /// Length of the file to deliver, in bytes.
        len: u64,
        /// Where it came from: `staging`, `prefetch` or `store`.
        served_from: String,
        /// A line to log at info level (e.g. that a partial segment was served).
        note: Option<String>,
    },
    /// The verified file is already at the request's `path` (moved there by the server).
    Placed {
        /// Length of the file, in bytes.
        len: u64,
        /// Where it came from: `prefetch` or `store`.
        served_from: String,
        /// A line to log at info level.
        note: Option<String>,
    },
    /// The store confirms the file is absent (exit 1).
    Absent {
        /// The store location, without credentials.
        store: String,
    },
    /// Recovery must stop (exit 255).
    Abort {
        /// Why.
        message: String,
    },
    /// This server cannot answer for this client (another store, another protocol version):
    /// the client looks elsewhere.
    Unavailable {
        /// Why.
        message: String,
    },
}

impl Reply {
    /// The [`Reply::Placed`] form of a [`Reply::Ready`]; other replies unchanged.
    pub fn placed(self) -> Reply {
        match self {
            Reply::Ready {
                len,
                served_from,
                note,
            } => Reply::Placed {
                len,
                served_from,
                note,
            },
            other => other,
        }
    }
}

/// Sends `line` (a JSON document; a newline is appended) and, if given, `fd` with it.
///
/// Blocking or non-blocking sockets: on a non-blocking one a `WouldBlock` error is returned
/// before anything is sent. Errors: the socket's.
pub fn send_line(socket: impl AsFd, line: &str, fd: Option<&OwnedFd>) -> io::Result<()> {
    let mut data = Vec::with_capacity(line.len() + 1);
    data.extend_from_slice(line.as_bytes());
    data.push(b'\n');
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("ancillary buffer too small"));
        }
    }
    let socket = socket.as_fd();
    let mut sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The descriptor went with the first byte; the rest of a long line follows without it.
    while sent < data.len() {
        let mut none = SendAncillaryBuffer::new(&mut []);
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&data[sent..])],
            &mut none,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) if e == rustix::io::Errno::AGAIN => {
                wait_writable(socket)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn wait_writable(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let mut fds = [rustix::event::PollFd::new(
        &socket,
        rustix::event::PollFlags::OUT,
    )];
    rustix::event::poll(&mut fds, None)?;
    Ok(())
}

/// Reads one line (without its newline) from a blocking socket, and the descriptor sent
/// with it, if any.
///
/// Errors: `UnexpectedEof` if the peer closes before a full line, `InvalidData` on a line
/// longer than [`MAX_LINE`], and the socket's errors (including a read timeout).
pub fn recv_line(socket: impl AsFd) -> io::Result<(String, Option<OwnedFd>)> {
    let socket = socket.as_fd();
    let mut line = Vec::new();
    let mut fd = None;
    let mut buf = [0u8; 4096];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = message {
                // One descriptor per reply; extra ones are closed when dropped.
                if fd.is_none() {
                    fd = fds.next();
                }
            }
        }
        if msg.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the fetch server closed the connection without an answer",
            ));
        }
        let chunk = &buf[..msg.bytes];
        if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            let text = String::from_utf8(line)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply is not UTF-8"))?;
            return Ok((text, fd));
        }
        line.extend_from_slice(chunk);
        if line.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn replies_round_trip_as_json_lines() {
        for reply in [
            Reply::Ready {
                len: 16 << 20,
                served_from: "prefetch".into(),
                note: None,
            },
            Reply::Absent { store: "x".into() },
            Reply::Abort {
                message: "y".into(),
            },
            Reply::Unavailable {
                message: "z".into(),
            },
        ] {
            let text = serde_json::to_string(&reply).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        }
        let text = serde_json::to_string(&Reply::Absent { store: "m".into() }).unwrap();
        assert_eq!(text, r#"{"status":"absent","store":"m"}"#);
    }

    #[test]
    fn a_descriptor_travels_with_its_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"segment bytes").unwrap();
        file.rewind().unwrap();
        let fd = OwnedFd::from(file);
        send_line(&a, r#"{"k":1}"#, Some(&fd)).unwrap();
        let (line, got) = recv_line(&b).unwrap();
        assert_eq!(line, r#"{"k":1}"#);
        let mut text = String::new();
        std::fs::File::from(got.expect("descriptor"))
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "segment bytes");
        drop(a);
        let err = recv_line(&b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_long_line_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let long = "x".repeat(20_000);
        let sender = {
            let long = long.clone();
            std::thread::spawn(move || send_line(&a, &long, None).unwrap())
        };
        let (line, fd) = recv_line(&b).unwrap();
        sender.join().unwrap();
        assert_eq!(line, long);
        assert!(fd.is_none());
    }
}
