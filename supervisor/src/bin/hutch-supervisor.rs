//! `hutch-supervisor`: the per-container supervisor and exec helper. Started only by the
//! agent; see `hutch_supervisor::supervisor` and `hutch_supervisor::exec`.
//!
//! ```text
//! hutch-supervisor zygote                       fork a supervisor per request on stdin
//! hutch-supervisor run DIR                      supervise the container in state dir DIR
//! hutch-supervisor exec DIR RESULT -- ARGV...   run ARGV inside it, outcome to RESULT
//! hutch-supervisor exec-tty DIR RESULT -- ARGV...   the same, stdin being its terminal
//! ```

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some(hutch_supervisor::zygote::ZYGOTE_MODE) if args.len() == 2 => {
            hutch_supervisor::zygote::main_zygote()
        }
        Some(hutch_supervisor::zygote::RUN_MODE) if args.len() == 3 => {
            hutch_supervisor::supervisor::main_run(Path::new(&args[2]))
        }
        Some(mode @ ("exec" | "exec-tty")) if args.len() >= 6 && args[4] == "--" => {
            hutch_supervisor::exec::main_exec(
                Path::new(&args[2]),
                Path::new(&args[3]),
                args[5..].to_vec(),
                mode == "exec-tty",
            )
        }
        _ => {
            eprintln!("usage: hutch-supervisor zygote | hutch-supervisor run DIR | hutch-supervisor exec DIR RESULT -- ARGV...\n(started by hutch-agent; not meant to be run by hand)");
            2
        }
    };
    std::process::exit(code);
}
