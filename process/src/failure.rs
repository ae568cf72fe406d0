//! How a binary reports the error it stops with: one line, each cause once.

use std::error::Error;
use std::process::ExitCode;

/// `error`'s message and its causes, joined by `: `, leaving out a cause whose
/// text the line already holds: an error that prints its cause and also
/// returns it as its source would otherwise say the same thing twice (or, in
/// a chain of such wrappers, four times).
pub fn error_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// The exit code for how a binary's run ended; an error is printed first, as
/// one line on standard error (`error: …`), without a backtrace: it is the
/// operator's to fix, not a bug.
pub fn exit_code<E: AsRef<dyn Error + 'static>>(ended: Result<(), E>) -> ExitCode {
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            #[allow(
                clippy::print_stderr,
                reason = "the last words of a binary that cannot start"
            )]
            {
                eprintln!("error: {}", error_line(error.as_ref()));
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its cause and returns it as its source too.
    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn Error + 'static>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}{}", self.0, self.1)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    #[derive(Debug)]
    struct Outer(Box<dyn Error + 'static>);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("--quic-listen")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let root = std::io::Error::other("key.pem is not the key of cert.pem");
        let chain = Outer(Box::new(Wrapper(
            "QUIC certificate: ",
            Box::new(Wrapper("", Box::new(root))),
        )));
        assert_eq!(
            error_line(&chain),
            "--quic-listen: QUIC certificate: key.pem is not the key of cert.pem"
        );
        let plain = std::io::Error::other("no such file");
        assert_eq!(error_line(&plain), "no such file");
    }
}
