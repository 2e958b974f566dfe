//! Why a command failed, as the operator acts on it: the appliance is not
//! there (exit 1), the caller lacks the role (exit 2), the appliance said no
//! for another reason (exit 1), the command line is wrong (exit 64).

use std::fmt;

use tonic::Code;

#[derive(Debug)]
pub enum Failure {
    /// No connection: the socket is missing, refused, or the peer went away.
    Unreachable { place: String, detail: String },
    /// The caller's role does not allow the call.
    PermissionDenied { message: String, hint: String },
    /// Any other error status, with the server's message.
    Status(tonic::Status),
    /// A source named on the command line is not among the appliance's.
    NoSuchSource(String),
    /// The command line or a file it names is unusable.
    Usage(String),
    /// stdout went away (a closed pipe ends the command quietly).
    Output(std::io::Error),
}

impl Failure {
    /// The process exit status (listed in `stratactl --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::PermissionDenied { .. } => 2,
            Failure::Usage(_) => 64,
            _ => 1,
        }
    }

    /// A closed pipe (`stratactl watch | head`) is not worth a message.
    pub fn is_silent(&self) -> bool {
        matches!(self, Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// Sorts a gRPC status: the codes an operator acts on differently get their own failure.
    pub fn from_status(status: tonic::Status, place: &str, role_hint: String) -> Failure {
        match status.code() {
            Code::PermissionDenied | Code::Unauthenticated => {
                Failure::PermissionDenied { message: status_message(&status), hint: role_hint }
            }
            // tonic reports a connection lost mid-call as UNAVAILABLE, or as
            // CANCELLED when hyper dropped the call with the connection.
            Code::Unavailable | Code::Cancelled => {
                Failure::Unreachable { place: place.to_string(), detail: status_message(&status) }
            }
            // A connection that failed after it was made (a TLS peer refusing
            // the client's certificate) comes as UNKNOWN with the transport
            // error as its source: that is the appliance saying no at the door.
            _ => match transport_error(&status) {
                Some(error) => Failure::Unreachable { place: place.to_string(), detail: chain(error) },
                None => Failure::Status(status),
            },
        }
    }
}

fn transport_error(status: &tonic::Status) -> Option<&tonic::transport::Error> {
    std::error::Error::source(status)?.downcast_ref::<tonic::transport::Error>()
}

fn status_message(status: &tonic::Status) -> String {
    if status.message().is_empty() { status.code().description().to_string() } else { status.message().to_string() }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable { place, detail } => write!(f, "cannot reach strata at {place}: {detail}"),
            // strata's own refusals already say which role the call needs.
            Failure::PermissionDenied { message, .. } if message.contains("needs the") => {
                write!(f, "permission denied: {message}")
            }
            Failure::PermissionDenied { message, hint } => write!(f, "permission denied: {message} ({hint})"),
            Failure::Status(status) => write!(f, "{}", status_message(status)),
            Failure::NoSuchSource(address) => write!(f, "no source {address}"),
            Failure::Usage(message) => write!(f, "{message}"),
            Failure::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

/// An error with its causes, "a: b: c", leaving out a cause that only repeats
/// its parent (tonic's transport errors nest the same words).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !last.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        last = words;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_exits_2_with_the_role() {
        let f = Failure::from_status(
            tonic::Status::permission_denied("uid 1000 is not in group strata-admin"),
            "/run/strata/control.sock",
            "makestep needs the admin role: a member of the admin group".into(),
        );
        assert_eq!(f.exit_code(), 2);
        assert_eq!(
            f.to_string(),
            "permission denied: uid 1000 is not in group strata-admin \
             (makestep needs the admin role: a member of the admin group)"
        );
    }

    #[test]
    fn a_refusal_that_names_the_role_is_not_repeated() {
        let f = Failure::from_status(
            tonic::Status::permission_denied("makestep needs the admin role: uid 1000 gid 1000 (pid 7) is not root"),
            "/run/strata/control.sock",
            "makestep needs the admin role: a member of the admin group".into(),
        );
        assert_eq!(
            f.to_string(),
            "permission denied: makestep needs the admin role: uid 1000 gid 1000 (pid 7) is not root"
        );
    }

    #[test]
    fn unavailable_is_unreachable() {
        let f = Failure::from_status(tonic::Status::unavailable("connection reset"), "/tmp/s", String::new());
        assert_eq!(f.exit_code(), 1);
        assert_eq!(f.to_string(), "cannot reach strata at /tmp/s: connection reset");
    }

    #[test]
    fn other_statuses_print_the_server_message() {
        let f = Failure::from_status(
            tonic::Status::failed_precondition("step refused: 2 steps used"),
            "/tmp/s",
            String::new(),
        );
        assert_eq!((f.exit_code(), f.to_string()), (1, "step refused: 2 steps used".to_string()));
        let f = Failure::from_status(tonic::Status::new(Code::DeadlineExceeded, ""), "/tmp/s", String::new());
        assert_eq!(f.to_string(), "Deadline expired before operation could complete");
    }

    #[test]
    fn causes_are_chained_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        #[derive(Debug)]
        struct Transport(std::io::Error);
        impl fmt::Display for Transport {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Transport {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(chain(&Transport(io)), "transport error: No such file or directory (os error 2)");
    }
}
