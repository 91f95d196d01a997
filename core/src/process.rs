//! How a process's end and the signals sent to it are spelled for people: signal names
//! (`TERM`, `SIGKILL`, `usr1`, or a number) and the exit status a shell would show for an
//! ended process (its exit code, or 128 + N when signal N ended it).

use std::str::FromStr;

use nix::sys::signal::Signal;
use thiserror::Error;

/// Highest signal number Linux has (the last real-time signal).
pub const MAX_SIGNAL: i32 = 64;

/// A signal that is neither a known name nor a number in 1..=64.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("unknown signal '{0}': use a name such as TERM, KILL, HUP, INT, QUIT, USR1, USR2 (with or without SIG), or a number from 1 to 64")]
pub struct UnknownSignal(pub String);

/// `TERM`, `SIGTERM`, `sigterm` or `15` -> 15. Names are this host's (`signal(7)`); numbers
/// may be real-time signals, which have no names.
pub fn parse_signal(text: &str) -> Result<i32, UnknownSignal> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=MAX_SIGNAL).contains(&n) {
            Ok(n)
        } else {
            Err(UnknownSignal(text.to_string()))
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| UnknownSignal(text.to_string()))
}

/// The status a shell shows for a process that ended with `exit_code`, or was killed by
/// `signal` (128 + N); `None` when neither is known (it has not ended, or never started).
pub fn shell_status(exit_code: Option<i32>, signal: Option<i32>) -> Option<u8> {
    match (exit_code, signal) {
        (Some(code), _) => u8::try_from(code & 0xff).ok(),
        (None, Some(sig)) => u8::try_from(128 + (sig & 0x7f)).ok(),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_or_without_sig_in_any_case_and_numbers() {
        for (text, n) in [
            ("TERM", 15),
            ("SIGKILL", 9),
            ("sigusr1", libc_usr1()),
            ("hup", 1),
            ("34", 34),
            (" 2 ", 2),
        ] {
            assert_eq!(parse_signal(text), Ok(n), "{text}");
        }
        for bad in ["", "0", "65", "-9", "SIGWHAT", "TERMX"] {
            let err = parse_signal(bad).expect_err(bad);
            assert!(err.to_string().contains("1 to 64"), "{err}");
        }
    }

    fn libc_usr1() -> i32 {
        Signal::SIGUSR1 as i32
    }

    #[test]
    fn shell_statuses() {
        assert_eq!(shell_status(Some(3), None), Some(3));
        assert_eq!(shell_status(Some(0), Some(9)), Some(0));
        assert_eq!(shell_status(None, Some(9)), Some(137));
        assert_eq!(shell_status(Some(256 + 7), None), Some(7));
        assert_eq!(shell_status(None, None), None);
    }
}
