//! Start-up warnings: settings the relay accepts but that cannot work as they
//! read, each said once at start, naming the flags.

use crate::args::Args;

/// What is wrong with `args`, one sentence per problem, flags first.
pub(crate) fn unworkable(args: &Args) -> Vec<String> {
    let mut warnings = Vec::new();
    if args.require_api_keys && args.admin_token.is_none() {
        warnings.push(
            "--require-api-keys without --admin-token: no API key can be made on this relay \
             (POST /admin/keys and the dashboard need the token), so every client gets 401 \
             unless the key database already holds keys; set --admin-token \
             (MODELRELAY_ADMIN_TOKEN)"
                .to_owned(),
        );
    }
    if args.tls_cert.is_some() && args.quic_listen.is_none() {
        warnings.push(
            "--tls-cert and --tls-key are for QUIC worker links only, and --quic-listen is not \
             set: they are not used; for HTTPS, put a TLS proxy in front (docs/runbook.md, TLS)"
                .to_owned(),
        );
    }
    let budget = args.max_buffered_request_bytes;
    if budget != 0 && args.max_body_bytes > budget {
        warnings.push(format!(
            "--max-body-bytes ({}) is above --max-buffered-request-bytes ({budget}): a body \
             larger than {budget} bytes can never be held and gets 503 server_busy",
            args.max_body_bytes
        ));
    }
    let (queue, request) = (args.queue_timeout, args.request_timeout);
    if queue != 0 && request != 0 && queue >= request {
        warnings.push(format!(
            "--queue-timeout ({queue} s) is not below --request-timeout ({request} s): the \
             request timeout ends a waiting request first, so the queue timeout never fires"
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn warnings_for(flags: &[&str]) -> Vec<String> {
        let base = ["modelrelay-server", "--worker-secret", "s"];
        unworkable(&Args::try_parse_from(base.iter().chain(flags)).unwrap())
    }

    #[test]
    fn the_defaults_draw_no_warning() {
        assert_eq!(warnings_for(&[]), Vec::<String>::new());
        assert_eq!(
            warnings_for(&["--require-api-keys", "--admin-token", "t"]),
            Vec::<String>::new()
        );
        let quic = [
            "--quic-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ];
        assert_eq!(warnings_for(&quic), Vec::<String>::new());
        let no_limits = [
            "--max-buffered-request-bytes",
            "0",
            "--request-timeout",
            "0",
        ];
        assert_eq!(warnings_for(&no_limits), Vec::<String>::new());
    }

    #[test]
    fn settings_that_cannot_work_are_named_by_their_flags() {
        let cases: [(&[&str], &[&str]); 4] = [
            (
                &["--require-api-keys"],
                &["--require-api-keys", "--admin-token"],
            ),
            (
                &["--tls-cert", "c", "--tls-key", "k"],
                &["--tls-cert", "--quic-listen"],
            ),
            (
                &[
                    "--max-body-bytes",
                    "2048",
                    "--max-buffered-request-bytes",
                    "1024",
                ],
                &["--max-body-bytes", "--max-buffered-request-bytes", "1024"],
            ),
            (
                &["--queue-timeout", "300"],
                &["--queue-timeout", "--request-timeout", "300 s"],
            ),
        ];
        for (flags, named) in cases {
            let warnings = warnings_for(flags);
            assert_eq!(warnings.len(), 1, "{flags:?}: {warnings:?}");
            for name in named {
                assert!(warnings[0].contains(name), "{flags:?}: {}", warnings[0]);
            }
        }
    }
}
