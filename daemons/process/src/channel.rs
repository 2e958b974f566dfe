//! A typed, framed channel over a `SOCK_SEQPACKET` socket: one message per datagram,
//! descriptors passed with `SCM_RIGHTS`.
//!
//! Receiving never blocks and never panics: every way a peer can be wrong is a
//! [`RecvError`], and the caller drops that peer. Zero bytes means the peer is gone:
//! an event, not an error to retry.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use strata_proto::ipc::{self, FrameError, Hello, MAX_FRAME, Message, Role};

#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("peer closed the channel")]
    Closed,
    #[error("nothing to read")]
    WouldBlock,
    #[error("frame longer than {MAX_FRAME} bytes")]
    Oversized,
    #[error("more descriptors attached than a message may carry")]
    TooManyDescriptors,
    #[error("a descriptor came with a message that carries none")]
    UnexpectedDescriptor,
    #[error("the message needs a descriptor and none came with it")]
    MissingDescriptor,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("receive failed: {0}")]
    Io(#[from] nix::Error),
}

impl RecvError {
    /// Whether the peer broke the protocol (as opposed to going away).
    pub fn is_violation(&self) -> bool {
        !matches!(self, RecvError::Closed | RecvError::WouldBlock | RecvError::Io(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer is not reading (its queue is full)")]
    Full,
    #[error("send failed: {0}")]
    Io(nix::Error),
}

/// A message and the descriptor that came with it, if any.
#[derive(Debug)]
pub struct Received<M> {
    pub msg: M,
    pub fd: Option<OwnedFd>,
}

impl Channel {
    /// A connected pair; both ends are close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    pub fn from_fd(socket: OwnedFd) -> Channel {
        Channel { socket }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.socket
    }

    /// Receive one raw frame into `buf` (at least [`MAX_FRAME`] bytes).
    pub fn recv_frame<'b>(&self, buf: &'b mut [u8]) -> Result<(&'b [u8], Option<OwnedFd>), RecvError> {
        let d = match strata_sys::recv_datagram(&self.socket, &mut buf[..MAX_FRAME]) {
            Ok(d) => d,
            Err(nix::Error::EAGAIN) => return Err(RecvError::WouldBlock),
            Err(nix::Error::ECONNRESET) => return Err(RecvError::Closed),
            Err(e) => return Err(RecvError::Io(e)),
        };
        if d.truncated {
            return Err(RecvError::Oversized);
        }
        if d.control_truncated || d.fds.len() > 1 {
            return Err(RecvError::TooManyDescriptors);
        }
        if d.len == 0 {
            return Err(RecvError::Closed);
        }
        Ok((&buf[..d.len], d.fds.into_iter().next()))
    }

    /// Receive and decode one message; a descriptor must come exactly with the
    /// messages that carry one.
    pub fn recv<M: Message>(&self, buf: &mut [u8]) -> Result<Received<M>, RecvError> {
        let (frame, fd) = self.recv_frame(buf)?;
        let msg: M = ipc::decode(frame)?;
        match (msg.carries_fd(), fd.is_some()) {
            (true, false) => Err(RecvError::MissingDescriptor),
            (false, true) => Err(RecvError::UnexpectedDescriptor),
            _ => Ok(Received { msg, fd }),
        }
    }

    /// Receive the handshake: `Hello` from `expected`, in our protocol version.
    pub fn recv_hello(&self, expected: Role) -> Result<Hello, RecvError> {
        let mut buf = vec![0u8; MAX_FRAME];
        let (frame, fd) = self.recv_frame(&mut buf)?;
        if fd.is_some() {
            return Err(RecvError::UnexpectedDescriptor);
        }
        Ok(ipc::decode_hello(frame, expected)?)
    }

    pub fn send<M: Message>(&self, msg: &M, fd: Option<BorrowedFd<'_>>) -> Result<(), SendError> {
        let mut buf = vec![0u8; MAX_FRAME];
        let frame = ipc::encode(msg, &mut buf)?;
        self.send_frame(frame, fd)
    }

    pub fn send_hello(&self, role: Role) -> Result<(), SendError> {
        let mut buf = [0u8; 32];
        self.send_frame(ipc::encode_hello(role, &mut buf), None)
    }

    pub fn send_frame(&self, frame: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), SendError> {
        match strata_sys::send_datagram(&self.socket, frame, fd) {
            Ok(_) => Ok(()),
            Err(nix::Error::EAGAIN) => Err(SendError::Full),
            Err(e) => Err(SendError::Io(e)),
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::ipc::{EngineToAdjuster, SupervisorToChild};

    #[test]
    fn messages_and_descriptors_cross_a_pair() {
        let (a, b) = Channel::pair().unwrap();
        let (c, _d) = Channel::pair().unwrap();
        let msg = SupervisorToChild::Peer { peer: Role::Adjust, link: 7 };
        a.send(&msg, Some(c.as_fd())).unwrap();
        let mut buf = vec![0; MAX_FRAME];
        let got = b.recv::<SupervisorToChild>(&mut buf).unwrap();
        assert_eq!(got.msg, msg);
        assert!(got.fd.is_some());
        assert!(matches!(b.recv::<SupervisorToChild>(&mut buf), Err(RecvError::WouldBlock)));
    }

    #[test]
    fn every_kind_of_bad_frame_is_a_violation_not_a_panic() {
        let (a, b) = Channel::pair().unwrap();
        let mut buf = vec![0; MAX_FRAME];
        let mut expect = |frame: &[u8], fd: Option<BorrowedFd<'_>>, check: fn(&RecvError) -> bool| {
            a.send_frame(frame, fd).unwrap();
            let err = b.recv::<EngineToAdjuster>(&mut buf).unwrap_err();
            assert!(check(&err) && err.is_violation(), "{err:?}");
        };
        expect(&vec![0u8; MAX_FRAME + 1], None, |e| matches!(e, RecvError::Oversized));
        expect(&[0xff, 0xff, 0xff], None, |e| matches!(e, RecvError::Frame(_)));
        expect(&[2, 0, 0], None, |e| matches!(e, RecvError::Frame(FrameError::Malformed(_))));
        let (x, _y) = Channel::pair().unwrap();
        expect(&[1], Some(x.as_fd()), |e| matches!(e, RecvError::UnexpectedDescriptor));
        a.send(&SupervisorToChild::Sealed, None).unwrap();
        let ok = b.recv::<SupervisorToChild>(&mut buf).unwrap();
        assert_eq!(ok.msg, SupervisorToChild::Sealed);
        a.send_frame(&[4, 1, 9], None).unwrap(); // Peer { Ntp, 9 } without its descriptor
        assert!(matches!(b.recv::<SupervisorToChild>(&mut buf), Err(RecvError::MissingDescriptor)));
        drop(a);
        assert!(matches!(b.recv::<EngineToAdjuster>(&mut buf), Err(RecvError::Closed)));
    }
}
